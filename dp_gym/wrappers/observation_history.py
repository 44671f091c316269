"""Stack the most recent observations on a new leading axis (Diffusion Policy's ``To``)."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.core import ActType, ObsType
from gymnasium.vector.utils import batch_space

from dp_gym.history import HistoryBuffer

__all__ = ["ObservationHistory"]


class ObservationHistory(gym.Wrapper[Any, ActType, ObsType, ActType], gym.utils.RecordConstructorArgs):
    """Return the last ``n_obs_steps`` observations stacked on a new leading axis.

    This is Gymnasium's :class:`~gymnasium.wrappers.FrameStackObservation` with
    ``padding_type="reset"`` (``ObservationHistory(env, n)`` returns the same observations as
    ``FrameStackObservation(env, n, padding_type="reset")``): the observation space is
    ``batch_space(space, n_obs_steps)`` (``Box(D...)`` becomes ``Box(n_obs_steps, D...)`` with the
    bounds tiled and the dtype kept; a ``Dict`` of ``Box`` becomes a ``Dict`` of stacked ``Box``),
    :meth:`reset` fills the history by repeating the first observation (as the Diffusion Policy
    paper pads), and each :meth:`step` drops the oldest entry and appends the newest (index ``-1``
    is the current observation). The history is a :class:`~dp_gym.history.HistoryBuffer`, the
    one :class:`~dp_gym.agent.PolicyAgent` keeps per env when the env is not wrapped.

    Where it differs from ``FrameStackObservation``:

    * observations are copied (and cast to the space's dtype) before they enter the history, so an
      env that mutates one observation array in place cannot change earlier entries;
    * only ``Box`` and ``Dict``-of-``Box`` observation spaces are accepted (a clear ``TypeError``
      otherwise), and a ``Dict`` observation missing a key raises ``KeyError``;
    * the only padding is the reset observation (no ``"zero"`` or custom padding);
    * :meth:`step` before :meth:`reset` raises ``gymnasium.error.ResetNeeded`` instead of
      stacking zero padding.

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
            n_obs_steps: number of observations to keep (``>= 1``; ``stack_size`` of
                ``FrameStackObservation``).

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
        if isinstance(space, spaces.Dict):
            for key, sub in space.spaces.items():
                if not isinstance(sub, spaces.Box):
                    raise TypeError(
                        f"ObservationHistory expects a Box or a Dict of Box observation space; "
                        f"key {key!r} is {type(sub).__name__}: {sub}"
                    )
        elif not isinstance(space, spaces.Box):
            raise TypeError(
                f"ObservationHistory expects a Box or a Dict of Box observation space, "
                f"got {type(space).__name__}: {space}"
            )
        self.observation_space = batch_space(space, self.n_obs_steps)
        self._history = HistoryBuffer(self.n_obs_steps)

    def _checked(self, obs: Any) -> Any:
        """``obs`` as arrays of the space's dtype, with every key of a ``Dict`` space."""
        space = self.env.observation_space
        if isinstance(space, spaces.Dict):
            if not isinstance(obs, dict):
                raise TypeError(f"expected a dict observation for a Dict space, got {type(obs).__name__}")
            missing = set(space.spaces) - set(obs)
            if missing:
                raise KeyError(f"observation is missing keys {sorted(missing)}; expected {sorted(space.spaces)}")
            return {k: np.asarray(obs[k], dtype=space[k].dtype) for k in space.spaces}
        return np.asarray(obs, dtype=space.dtype)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the env and fill the history with ``n_obs_steps`` copies of the first observation."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._history.clear()
        self._history.push(self._checked(obs))
        return self._history.stacked(), info

    def step(self, action: ActType) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env and append the new observation, dropping the oldest one."""
        if len(self._history) == 0:
            raise gym.error.ResetNeeded("ObservationHistory: call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._history.push(self._checked(obs))
        return self._history.stacked(), reward, terminated, truncated, info
