"""Stack the most recent observations on a new leading axis (Diffusion Policy's ``To``)."""

from __future__ import annotations

from collections import deque
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.core import ActType, ObsType

__all__ = ["ObservationHistory"]


def _stack_box(space: spaces.Box, n: int) -> spaces.Box:
    """``Box(D...)`` -> ``Box(n, D...)`` with ``low``/``high`` tiled and the same dtype."""
    low = np.repeat(space.low[np.newaxis], n, axis=0)
    high = np.repeat(space.high[np.newaxis], n, axis=0)
    return spaces.Box(low=low, high=high, dtype=space.dtype)


class ObservationHistory(gym.Wrapper[Any, ActType, ObsType, ActType], gym.utils.RecordConstructorArgs):
    """Return the last ``n_obs_steps`` observations stacked on a new leading axis.

    A ``Box`` observation space of shape ``(D...)`` becomes ``Box(n_obs_steps, D...)`` with the
    bounds tiled and the dtype kept. A ``Dict`` of ``Box`` spaces becomes a ``Dict`` holding one
    stacked ``Box`` per key. On :meth:`reset` the history is filled by repeating the first
    observation ``n_obs_steps`` times, so every returned observation has the full length; after
    each :meth:`step` the oldest entry is dropped and the newest appended (index ``-1`` is the
    current observation).

    Example:
        >>> import gymnasium as gym
        >>> from dp_gym.wrappers import ObservationHistory
        >>> env = ObservationHistory(gym.make("CartPole-v1"), n_obs_steps=2)
        >>> env.observation_space.shape
        (2, 4)
        >>> obs, _ = env.reset(seed=0)
        >>> obs.shape, bool((obs[0] == obs[1]).all())
        ((2, 4), True)
        >>> obs, *_ = env.step(0)
        >>> obs.shape
        (2, 4)
    """

    def __init__(self, env: gym.Env[ObsType, ActType], n_obs_steps: int):
        """Wrap ``env``.

        Args:
            env: environment whose observation space is a ``Box`` or a ``Dict`` of ``Box``.
            n_obs_steps: number of observations to keep (``>= 1``).

        Raises:
            ValueError: ``n_obs_steps`` is not an integer ``>= 1``.
            TypeError: the observation space is neither ``Box`` nor ``Dict`` of ``Box``.
        """
        if isinstance(n_obs_steps, bool) or not isinstance(n_obs_steps, (int, np.integer)):
            raise ValueError(f"n_obs_steps must be an integer >= 1, got {n_obs_steps!r}")
        if n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be an integer >= 1, got {n_obs_steps}")
        gym.utils.RecordConstructorArgs.__init__(self, n_obs_steps=int(n_obs_steps))
        gym.Wrapper.__init__(self, env)

        self.n_obs_steps = int(n_obs_steps)
        space = env.observation_space
        if isinstance(space, spaces.Box):
            self.observation_space = _stack_box(space, self.n_obs_steps)
        elif isinstance(space, spaces.Dict):
            stacked: dict[str, spaces.Space] = {}
            for key, sub in space.spaces.items():
                if not isinstance(sub, spaces.Box):
                    raise TypeError(
                        f"ObservationHistory expects a Box or a Dict of Box observation space; "
                        f"key {key!r} is {type(sub).__name__}: {sub}"
                    )
                stacked[key] = _stack_box(sub, self.n_obs_steps)
            self.observation_space = spaces.Dict(stacked)
        else:
            raise TypeError(
                f"ObservationHistory expects a Box or a Dict of Box observation space, "
                f"got {type(space).__name__}: {space}"
            )
        self._history: deque[Any] = deque(maxlen=self.n_obs_steps)

    def _copy(self, obs: Any) -> Any:
        """Copy ``obs`` so later in-place changes by the env cannot alter the history."""
        space = self.env.observation_space
        if isinstance(space, spaces.Dict):
            if not isinstance(obs, dict):
                raise TypeError(f"expected a dict observation for a Dict space, got {type(obs).__name__}")
            missing = set(space.spaces) - set(obs)
            if missing:
                raise KeyError(f"observation is missing keys {sorted(missing)}; expected {sorted(space.spaces)}")
            return {k: np.array(obs[k], dtype=space[k].dtype, copy=True) for k in space.spaces}
        return np.array(obs, dtype=space.dtype, copy=True)

    def _stacked(self) -> Any:
        """The history as one array (or one array per key) of leading length ``n_obs_steps``."""
        if isinstance(self.observation_space, spaces.Dict):
            return {k: np.stack([o[k] for o in self._history], axis=0) for k in self.observation_space.spaces}
        return np.stack(list(self._history), axis=0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the env and fill the history with ``n_obs_steps`` copies of the first observation."""
        obs, info = self.env.reset(seed=seed, options=options)
        first = self._copy(obs)
        self._history.clear()
        for _ in range(self.n_obs_steps):
            self._history.append(first)
        return self._stacked(), info

    def step(self, action: ActType) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env and append the new observation, dropping the oldest one."""
        if len(self._history) == 0:
            raise gym.error.ResetNeeded("ObservationHistory: call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._history.append(self._copy(obs))
        return self._stacked(), reward, terminated, truncated, info
