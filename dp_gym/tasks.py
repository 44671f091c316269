"""Tasks: an environment factory + a dataset reader + a metric, under one name.

A dataset reader returns an :class:`EpisodeData` whose arrays hold the policy's observation keys
(per-frame, matching the env's observation) and ``action``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from dp_gym.data.replay import EpisodeData, read_zarr_replay
from dp_gym.paths import dataset_path

PUSHT_ZARR = "pusht/pusht_cchi_v7_replay.zarr"
KITCHEN_COMPLETE_HDF5 = "kitchen/kitchen_complete-v0.hdf5"


@dataclass(frozen=True)
class Task:
    name: str
    env_id: str
    env_kwargs: dict[str, Any]
    load_dataset: Callable[[str | None], EpisodeData]
    obs_keys: tuple[str, ...]
    max_episode_steps: int
    # Metric: the episode's maximum of the per-step reward (Push-T: coverage) and success from
    # info["is_success"]. Optional per-episode count metric (Franka Kitchen: completed tasks): the
    # info key whose episode maximum is recorded, and the largest possible count; results then
    # get p1..pK and mean_<count>.
    count_info_key: str | None = None
    count_max: int = 0

    def make_env(self, **overrides: Any) -> gym.Env:
        import dp_gym  # noqa: F401  (registers the env ids)

        if not self.env_id:
            raise ValueError(f"task {self.name!r} is dataset-only and has no environment")

        return gym.make(self.env_id, **{**self.env_kwargs, **overrides})


def _pusht_keypoints(data_dir: str | None) -> EpisodeData:
    ep = read_zarr_replay(dataset_path(PUSHT_ZARR, data_dir), keys=["keypoint", "state", "action"])
    kp = ep.arrays["keypoint"].reshape(len(ep.arrays["keypoint"]), -1)
    obs = np.concatenate([kp, ep.arrays["state"][:, :2]], axis=-1).astype(np.float32)
    return EpisodeData({"obs": obs, "action": ep.arrays["action"].astype(np.float32)}, ep.episode_ends, ep.meta)


def _pusht_state(data_dir: str | None) -> EpisodeData:
    ep = read_zarr_replay(dataset_path(PUSHT_ZARR, data_dir), keys=["state", "action"])
    state = ep.arrays["state"].astype(np.float32).copy()
    state[:, 4] = np.mod(state[:, 4], 2 * np.pi)
    return EpisodeData({"obs": state, "action": ep.arrays["action"].astype(np.float32)}, ep.episode_ends, ep.meta)


def _pusht_image(data_dir: str | None) -> EpisodeData:
    ep = read_zarr_replay(dataset_path(PUSHT_ZARR, data_dir), keys=["img", "state", "action"], uint8_keys=("img",))
    agent_pos = ep.arrays["state"][:, :2].astype(np.float32)
    return EpisodeData({"pixels": ep.arrays["img"], "agent_pos": agent_pos, "action": ep.arrays["action"].astype(np.float32)},
                       ep.episode_ends, ep.meta)


def _kitchen_complete(data_dir: str | None) -> EpisodeData:
    from dp_gym.data.d4rl import read_d4rl_hdf5

    ep = read_d4rl_hdf5(dataset_path(KITCHEN_COMPLETE_HDF5, data_dir))
    return EpisodeData({"obs": ep.arrays["obs"], "action": ep.arrays["action"]}, ep.episode_ends, ep.meta)


def _kitchen_complete_abs(data_dir: str | None) -> EpisodeData:
    from dp_gym.envs.kitchen import N_ROBOT_QPOS, velocity_to_position_targets

    ep = _kitchen_complete(data_dir)
    targets = velocity_to_position_targets(ep.arrays["obs"][:, :N_ROBOT_QPOS], ep.arrays["action"])
    return EpisodeData({"obs": ep.arrays["obs"], "action": targets.astype(np.float32)}, ep.episode_ends, ep.meta)


ROBOMIMIC_LOWDIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
ROBOMIMIC_CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")


def _robomimic_reader(rel_path: str, obs_keys: tuple[str, ...], absolute: bool = False) -> Callable[[str | None], EpisodeData]:
    """Reader of a robomimic-layout HDF5 file under the data directory: our scripted demos
    (``python -m dp_gym.collect --task lift --out <data>/robosuite/lift.hdf5``) or, renamed to that
    path, robomimic's released ``low_dim`` / ``image`` files. ``absolute``: read the absolute pose
    actions our collector stores as ``actions_abs`` (axis-angle), converted to the env's rot6d layout."""

    def load(data_dir: str | None) -> EpisodeData:
        from dp_gym.data.robomimic import read_robomimic_hdf5

        if absolute:
            return read_robomimic_hdf5(dataset_path(rel_path, data_dir), obs_keys=obs_keys, action_key="actions_abs", abs_rot6d=True)
        return read_robomimic_hdf5(dataset_path(rel_path, data_dir), obs_keys=obs_keys)

    return load


def _robosuite_tasks() -> dict[str, Task]:
    tasks = {}
    for name, env_task, horizon in (("lift", "Lift", 400), ("can", "PickPlaceCan", 400), ("square", "NutAssemblySquare", 400)):
        # robomimic <env task> (Panda, OSC_POSE delta actions) from low-dim state
        tasks[f"{name}_state"] = Task(
            name=f"{name}_state", env_id=f"dp_gym/{env_task}-v0", env_kwargs={}, max_episode_steps=horizon,
            load_dataset=_robomimic_reader(f"robosuite/{name}.hdf5", ROBOMIMIC_LOWDIM_KEYS), obs_keys=ROBOMIMIC_LOWDIM_KEYS,
        )
        # The same from low-dim state with absolute pose actions (pos + rot6d + gripper): the
        # paper's choice for diffusion policy ("position control"), which it found far better
        # than delta ("velocity") actions.
        tasks[f"{name}_state_abs"] = Task(
            name=f"{name}_state_abs", env_id=f"dp_gym/{env_task}-v0", env_kwargs={"action_mode": "absolute"},
            max_episode_steps=horizon, obs_keys=ROBOMIMIC_LOWDIM_KEYS,
            load_dataset=_robomimic_reader(f"robosuite/{name}.hdf5", ROBOMIMIC_LOWDIM_KEYS, absolute=True),
        )
        keys = ROBOMIMIC_CAMERAS + ROBOMIMIC_LOWDIM_KEYS[:3]
        # The same from agentview + eye-in-hand 84x84 images and proprioception
        tasks[f"{name}_image"] = Task(
            name=f"{name}_image", env_id=f"dp_gym/{env_task}-v0", env_kwargs={"cameras": ("agentview", "robot0_eye_in_hand")},
            max_episode_steps=horizon, load_dataset=_robomimic_reader(f"robosuite/{name}_image.hdf5", keys), obs_keys=keys,
        )
    return tasks


def _toy_bimodal(data_dir: str | None = None, n_episodes: int = 64, length: int = 16, seed: int = 0) -> EpisodeData:
    """Synthetic task with two equally good action modes: the observation is always 0 and each
    demonstration holds its action at +0.7 or at -0.7 (50/50, small jitter). A mean-regression
    policy predicts ~0, which no demonstration ever does."""
    rng = np.random.default_rng(seed)
    signs = np.where(np.arange(n_episodes) % 2 == 0, 1.0, -1.0)
    action = (signs[:, None] * 0.7 + rng.normal(0, 0.03, size=(n_episodes, length))).reshape(-1, 1)
    obs = np.zeros((n_episodes * length, 2), dtype=np.float32)
    return EpisodeData({"obs": obs, "action": action.astype(np.float32)}, np.arange(1, n_episodes + 1) * length)


TASKS: dict[str, Task] = {
    # Push-T from 9 block keypoints + agent position (paper: 'Push-T keypoints')
    "pusht_keypoints": Task(
        name="pusht_keypoints",
        env_id="dp_gym/PushT-v0",
        env_kwargs={"obs_type": "keypoints"},
        load_dataset=_pusht_keypoints,
        obs_keys=("obs",),
        max_episode_steps=300,
    ),
    # Push-T from [agent_xy, block_xy, block_angle]
    "pusht_state": Task(
        name="pusht_state",
        env_id="dp_gym/PushT-v0",
        env_kwargs={"obs_type": "state"},
        load_dataset=_pusht_state,
        obs_keys=("obs",),
        max_episode_steps=300,
    ),
    # Push-T from the 96x96 RGB image (uint8) + agent position (paper: 'Push-T image')
    "pusht_image": Task(
        name="pusht_image",
        env_id="dp_gym/PushT-v0",
        env_kwargs={"obs_type": "pixels_agent_pos"},
        load_dataset=_pusht_image,
        obs_keys=("pixels", "agent_pos"),
        max_episode_steps=300,
    ),
    # Franka Kitchen (D4RL kitchen-complete-v0, 19 demos): microwave, kettle, light switch, slide cabinet
    "kitchen_complete": Task(
        name="kitchen_complete",
        env_id="dp_gym/FrankaKitchen-v0",
        env_kwargs={},  # tasks: microwave, kettle, light switch, slide cabinet; 280 steps
        load_dataset=_kitchen_complete,
        obs_keys=("obs",),
        max_episode_steps=280,
        count_info_key="n_completed",
        count_max=4,
    ),
    # two equally good action modes (+0.7 / -0.7) for the same observation
    "toy_bimodal": Task(
        name="toy_bimodal",
        env_id="",  # dataset-only task: scored by benchmarks/toy_multimodal.py, not by rollouts
        env_kwargs={},
        load_dataset=_toy_bimodal,
        obs_keys=("obs",),
        max_episode_steps=16,
    ),
}


# The same kitchen task with joint position targets as actions, the demos' velocities converted
# exactly (see dp_gym.envs.kitchen).
TASKS["kitchen_complete_abs"] = replace(
    TASKS["kitchen_complete"], name="kitchen_complete_abs", env_kwargs={"action_mode": "absolute"},
    load_dataset=_kitchen_complete_abs,
)
TASKS.update(_robosuite_tasks())


def task_names() -> list[str]:
    """The registered task names, sorted (what ``--task`` accepts)."""
    return sorted(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}")
    return TASKS[name]
