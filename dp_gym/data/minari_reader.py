"""Read Minari datasets (``minari`` package, local storage only) into :class:`EpisodeData`.

Minari stores one observation more than actions per episode (the final observation); frames here
are the observations the actions were taken from, so the final one is dropped and ``obs[t]`` pairs
with ``action[t]``.

Franka Kitchen datasets (``D4RL/kitchen/complete-v2``, ``partial-v2``, ``mixed-v2``) were recorded
in gymnasium-robotics' ``FrankaKitchen-v1``, whose observation is a dict: ``observation`` (59 =
robot qpos 9, robot qvel 9, object qpos 21, object qvel 20), ``achieved_goal`` and
``desired_goal`` (per-task dicts). :func:`read_minari_kitchen` converts them to the D4RL 60-d layout
of ``dp_gym/FrankaKitchen-v0`` (robot qpos 9, object qpos 21, goal 30).

Example:
    >>> import os; os.environ["MINARI_DATASETS_PATH"] = "/path/to/minari/datasets"  # doctest: +SKIP
    >>> ep = read_minari_kitchen("D4RL/kitchen/complete-v2")  # doctest: +SKIP
    >>> ep.arrays["obs"].shape[1], ep.arrays["action"].shape[1]  # doctest: +SKIP
    (60, 9)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from dp_gym.data.replay import EpisodeData

KITCHEN_OBS_DIM = 59  # gymnasium-robotics FrankaKitchen-v1 "observation"


def open_minari(dataset: Any) -> Any:
    """A ``minari.MinariDataset`` from a dataset id (looked up in ``$MINARI_DATASETS_PATH`` /
    ``~/.minari/datasets``, never downloaded), a dataset folder (holding ``data/``), or a dataset."""
    import minari  # optional dependency ([kitchen] extra)
    from minari.dataset.minari_dataset import MinariDataset

    if isinstance(dataset, MinariDataset):
        return dataset
    if isinstance(dataset, Path) or (isinstance(dataset, str) and Path(dataset).is_dir()):
        path = Path(dataset)
        data = path / "data" if (path / "data").is_dir() else path
        if not (data / "metadata.json").is_file():
            raise FileNotFoundError(f"{path} is not a Minari dataset folder: expected {data / 'metadata.json'}")
        return MinariDataset(data)
    if isinstance(dataset, str):
        return minari.load_dataset(dataset, download=False)
    raise TypeError(f"expected a Minari dataset id, folder or MinariDataset, got {type(dataset).__name__}")


def read_minari(dataset: Any, obs_fn: Callable[[Any, int], np.ndarray] | None = None) -> EpisodeData:
    """All episodes of a Minari dataset as ``EpisodeData(obs, action)`` (float32).

    ``obs_fn(observations, n)`` turns one episode's stored observations (array or dict of arrays,
    ``n + 1`` frames) into an ``(n, obs_dim)`` array; by default the observations must be an array.
    """
    ds = open_minari(dataset)
    obs_parts, act_parts, ends = [], [], []
    total = 0
    for episode in ds.iterate_episodes():
        actions = np.asarray(episode.actions, dtype=np.float32)
        n = len(actions)
        if n == 0:
            continue
        if obs_fn is None:
            if not isinstance(episode.observations, np.ndarray):
                raise TypeError(f"episode {episode.id}: observations are {type(episode.observations).__name__}, "
                                "not an array; pass obs_fn to flatten them")
            obs = episode.observations[:n]
        else:
            obs = obs_fn(episode.observations, n)
        obs = np.asarray(obs, dtype=np.float32).reshape(n, -1)
        if len(obs) != n:
            raise ValueError(f"episode {episode.id}: {len(obs)} observations for {n} actions")
        obs_parts.append(obs)
        act_parts.append(actions.reshape(n, -1))
        total += n
        ends.append(total)
    if not ends:
        raise ValueError(f"Minari dataset {ds.id!r} has no non-empty episodes")
    return EpisodeData({"obs": np.concatenate(obs_parts), "action": np.concatenate(act_parts)}, np.asarray(ends),
                       meta={"source": f"minari:{ds.id}", "format": "minari"})


def kitchen_obs_to_d4rl(observations: dict[str, Any], n: int) -> np.ndarray:
    """FrankaKitchen-v1 dict observations (``n`` or more frames) -> ``(n, 60)`` D4RL layout."""
    from dp_gym.envs.kitchen import N_QPOS, N_ROBOT_QPOS, goal_vector
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_INDICES

    if not isinstance(observations, dict) or "observation" not in observations or "desired_goal" not in observations:
        got = sorted(observations) if isinstance(observations, dict) else type(observations).__name__
        raise KeyError(f"kitchen observations must be a dict with 'observation' and 'desired_goal', got {got}")
    flat = np.asarray(observations["observation"])[:n]
    if flat.ndim != 2 or flat.shape[1] != KITCHEN_OBS_DIM or len(flat) != n:
        raise ValueError(f"kitchen 'observation' must be ({n}+, {KITCHEN_OBS_DIM}) (robot qpos 9, qvel 9, object "
                         f"qpos 21, qvel 20), got {np.asarray(observations['observation']).shape}")
    n_robot, n_obj = N_ROBOT_QPOS, N_QPOS - N_ROBOT_QPOS
    robot = flat[:, :n_robot]
    objects = flat[:, 2 * n_robot:2 * n_robot + n_obj]
    goals = observations["desired_goal"]
    goal = np.tile(goal_vector(list(goals)), (n, 1))  # validates the task names
    for task, values in goals.items():
        goal[:, OBS_ELEMENT_INDICES[task]] = np.asarray(values)[:n].reshape(n, -1)
    return np.concatenate([robot, objects, goal], axis=1)


def read_minari_kitchen(dataset: Any) -> EpisodeData:
    """A Minari Franka Kitchen dataset (e.g. ``D4RL/kitchen/complete-v2``) in the D4RL 60-d layout."""
    return read_minari(dataset, obs_fn=kitchen_obs_to_d4rl)
