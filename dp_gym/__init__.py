"""dp_gym: Diffusion Policy as a Gymnasium / Stable-Baselines3 compatible agent.

Importing the package registers the environments (``dp_gym/PushT-v0``). :class:`PolicyAgent`
(also exported as ``DiffusionAgent``) runs any dp_gym policy behind an SB3-style ``predict``.

Commands (``python -m dp_gym`` lists them): ``dp_gym.train``, ``dp_gym.benchmark``,
``dp_gym.suite``, ``dp_gym.zoo``, ``dp_gym.collect``, ``dp_gym.perf``, ``dp_gym.data.robomimic``,
``dp_gym.utils.cli``. The other modules are library code; ``docs/architecture.md`` maps them.
"""

from __future__ import annotations

import gymnasium as gym

__version__ = "0.1.0"

if "dp_gym/PushT-v0" not in gym.registry:
    # Truncation at 300 steps happens inside the env (max_episode_steps ctor arg) so that the env
    # behaves the same when constructed directly; no extra TimeLimit wrapper.
    gym.register("dp_gym/PushT-v0", entry_point="dp_gym.envs.pusht:PushTEnv", max_episode_steps=None,
                 disable_env_checker=True)
if "dp_gym/FrankaKitchen-v0" not in gym.registry:
    # String entry point: gymnasium-robotics / mujoco ([kitchen] extra) are imported only on gym.make.
    gym.register("dp_gym/FrankaKitchen-v0", entry_point="dp_gym.envs.kitchen:FrankaKitchenD4RLEnv",
                 max_episode_steps=None, disable_env_checker=True)
# robomimic tasks on robosuite ([robosuite] extra, imported only on gym.make); the env truncates
# at the paper's evaluation horizon itself.
for _rs_task in ("Lift", "PickPlaceCan", "NutAssemblySquare", "TwoArmTransport", "ToolHang"):
    if f"dp_gym/{_rs_task}-v0" not in gym.registry:
        gym.register(f"dp_gym/{_rs_task}-v0", entry_point="dp_gym.envs.robosuite_env:RobosuiteEnv",
                     kwargs={"task": _rs_task}, max_episode_steps=None, disable_env_checker=True)

from dp_gym.agent import DiffusionAgent, PolicyAgent  # noqa: E402

__all__ = ["DiffusionAgent", "PolicyAgent", "__version__"]
