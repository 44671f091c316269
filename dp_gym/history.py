"""Observation history and action queue of one episode: the receding-horizon state that
:class:`~dp_gym.agent.PolicyAgent` keeps per env and that the wrappers
:class:`~dp_gym.wrappers.ObservationHistory` and :class:`~dp_gym.wrappers.ActionChunking` keep
inside an env.

Example:
    >>> import numpy as np
    >>> h = HistoryBuffer(3)
    >>> h.push(np.array([1.0])); h.stacked().ravel().tolist()   # padded with the first observation
    [1.0, 1.0, 1.0]
    >>> h.push(np.array([2.0])); h.stacked().ravel().tolist()
    [1.0, 1.0, 2.0]
    >>> q = ActionQueue()
    >>> q.fill(np.arange(3.0)); float(q.pop()), len(q)
    (0.0, 2)
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

__all__ = ["ActionQueue", "HistoryBuffer"]


class HistoryBuffer:
    """The last ``n`` observations of one episode, oldest first.

    The first :meth:`push` after construction or :meth:`clear` fills all ``n`` slots with that
    observation (Diffusion Policy's padding at the start of an episode); every later push drops
    the oldest one. Observations are arrays or dicts of arrays; they are copied on push, so an env
    that reuses its observation buffer cannot change the history afterwards.
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"a history holds an integer >= 1 observations, got {n!r}")
        self.n = int(n)
        self._frames: deque[Any] = deque(maxlen=self.n)

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        """Forget every observation (the next push starts a new episode)."""
        self._frames.clear()

    def push(self, obs: Any) -> None:
        """Append ``obs`` (the first one after a clear fills the whole history)."""
        frame = {k: np.array(v, copy=True) for k, v in obs.items()} if isinstance(obs, dict) else np.array(obs, copy=True)
        if not self._frames:
            self._frames.extend([frame] * self.n)
        else:
            self._frames.append(frame)

    def stacked(self) -> Any:
        """The history on a new leading axis of length ``n`` (per key for dict observations);
        index ``-1`` is the newest observation."""
        if not self._frames:
            raise RuntimeError("the history is empty: push the episode's first observation first")
        first = self._frames[0]
        if isinstance(first, dict):
            return {k: np.stack([f[k] for f in self._frames]) for k in first}
        return np.stack(list(self._frames))


class ActionQueue:
    """Planned actions not yet executed, first in first out."""

    def __init__(self) -> None:
        self._actions: deque[np.ndarray] = deque()

    def __len__(self) -> int:
        return len(self._actions)

    def clear(self) -> None:
        self._actions.clear()

    def fill(self, chunk: np.ndarray) -> None:
        """Replace the queue with the actions of ``chunk`` (leading axis: time)."""
        self._actions = deque(chunk)

    def pop(self) -> np.ndarray:
        """The next action (``IndexError`` when the queue is empty)."""
        if not self._actions:
            raise IndexError("the action queue is empty: fill it with a planned chunk first")
        return self._actions.popleft()

    def drain(self) -> np.ndarray:
        """Every queued action, stacked on a leading time axis; the queue is empty afterwards."""
        actions = np.stack(list(self._actions))
        self._actions.clear()
        return actions
