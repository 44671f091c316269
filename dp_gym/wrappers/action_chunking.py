"""Execute a chunk of ``Ta`` actions per ``step`` (Diffusion Policy's receding-horizon control)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dp_gym.history import ActionQueue

__all__ = ["ActionChunking"]

_AGGREGATIONS = ("max", "sum")


class ActionChunking(gym.Wrapper[Any, np.ndarray, Any, np.ndarray], gym.utils.RecordConstructorArgs):
    """Take a chunk of ``n_action_steps`` actions per :meth:`step` and run them in order.

    The action space ``Box(A...)`` becomes ``Box(n_action_steps, A...)`` with the bounds tiled.
    :meth:`step` runs the actions one after the other and stops early at the first termination or
    truncation. It returns the last observation, the rewards of the executed steps aggregated by
    ``reward_aggregation`` (``"max"``, the Diffusion Policy convention for success-style rewards,
    or ``"sum"``), ``terminated``/``truncated`` of the last executed step, and that step's ``info``
    with two extra keys: ``info["rewards"]`` (list of the per-step rewards, one per executed step)
    and ``info["n_steps"]`` (number of steps executed).

    The chunk's actions are run from an :class:`~dp_gym.history.ActionQueue`, the queue
    :class:`~dp_gym.agent.PolicyAgent` keeps per env when it returns one action per call.

    Put it outside :class:`ObservationHistory` so that the returned history spans the inner steps.

    Example:
        >>> import gymnasium as gym
        >>> import numpy as np
        >>> from dp_gym.wrappers import ActionChunking, ObservationHistory
        >>> env = ActionChunking(ObservationHistory(gym.make("MountainCarContinuous-v0"), 2), 8)
        >>> env.action_space.shape, env.observation_space.shape
        ((8, 1), (2, 2))
        >>> _ = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(np.zeros((8, 1), dtype=np.float32))
        >>> obs.shape, info["n_steps"], len(info["rewards"])
        ((2, 2), 8, 8)
    """

    def __init__(self, env: gym.Env, n_action_steps: int, reward_aggregation: str = "max"):
        """Wrap ``env``.

        Args:
            env: environment with a ``Box`` action space.
            n_action_steps: chunk length ``Ta`` (``>= 1``).
            reward_aggregation: ``"max"`` or ``"sum"`` over the executed steps.

        Raises:
            ValueError: bad ``n_action_steps`` or ``reward_aggregation``.
            TypeError: the action space is not a ``Box``.
        """
        if isinstance(n_action_steps, bool) or not isinstance(n_action_steps, (int, np.integer)):
            raise ValueError(f"n_action_steps must be an integer >= 1, got {n_action_steps!r}")
        if n_action_steps < 1:
            raise ValueError(f"n_action_steps must be an integer >= 1, got {n_action_steps}")
        if reward_aggregation not in _AGGREGATIONS:
            raise ValueError(f"reward_aggregation must be one of {_AGGREGATIONS}, got {reward_aggregation!r}")
        gym.utils.RecordConstructorArgs.__init__(
            self, n_action_steps=int(n_action_steps), reward_aggregation=reward_aggregation
        )
        gym.Wrapper.__init__(self, env)

        space = env.action_space
        if not isinstance(space, spaces.Box):
            raise TypeError(f"ActionChunking expects a Box action space, got {type(space).__name__}: {space}")
        self.n_action_steps = int(n_action_steps)
        self.reward_aggregation = reward_aggregation
        self.action_space = spaces.Box(
            low=np.repeat(space.low[np.newaxis], self.n_action_steps, axis=0),
            high=np.repeat(space.high[np.newaxis], self.n_action_steps, axis=0),
            dtype=space.dtype,
        )
        self._queue = ActionQueue()  # the chunk's actions not yet run

    def _validate(self, chunk: Any) -> np.ndarray:
        """Return ``chunk`` as an array of the action space's shape and dtype, or raise."""
        expected = self.action_space.shape
        try:
            arr = np.asarray(chunk)
        except Exception as exc:  # ragged nested lists and the like
            raise ValueError(f"action chunk must be an array of shape {expected}, got {type(chunk).__name__}") from exc
        if arr.shape != expected:
            raise ValueError(f"action chunk must have shape {expected} (n_action_steps, *action_shape), got {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"action chunk must be numeric, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))
            raise ValueError(
                f"action chunk contains NaN or inf at {len(bad)} position(s), first at index {tuple(bad[0])}"
            )
        return arr.astype(self.action_space.dtype, copy=False)

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Run the chunk's actions in order, stopping at the first termination or truncation."""
        self._queue.fill(self._validate(action))
        rewards: list[float] = []
        obs: Any = None
        terminated = truncated = False
        info: dict[str, Any] = {}
        while len(self._queue):
            obs, reward, terminated, truncated, info = self.env.step(self._queue.pop())
            rewards.append(float(reward))
            if terminated or truncated:
                self._queue.clear()  # the rest of the chunk is never executed
                break
        total = max(rewards) if self.reward_aggregation == "max" else float(sum(rewards))
        info = dict(info)
        info["rewards"] = rewards
        info["n_steps"] = len(rewards)
        return obs, total, bool(terminated), bool(truncated), info
