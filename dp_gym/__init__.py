"""dp_gym: Diffusion Policy as a Gymnasium / Stable-Baselines3 compatible agent.

Importing the package registers the environments (``dp_gym/PushT-v0``).
"""

from __future__ import annotations

import gymnasium as gym

__version__ = "0.1.0"

if "dp_gym/PushT-v0" not in gym.registry:
    # Truncation at 300 steps happens inside the env (max_episode_steps ctor arg) so that the env
    # behaves the same when constructed directly; no extra TimeLimit wrapper.
    gym.register("dp_gym/PushT-v0", entry_point="dp_gym.envs.pusht:PushTEnv", max_episode_steps=None,
                 disable_env_checker=True)

from dp_gym.agent import DiffusionAgent  # noqa: E402

__all__ = ["DiffusionAgent", "__version__"]
