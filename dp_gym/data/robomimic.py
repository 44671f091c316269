"""robomimic HDF5 datasets: reader, atomic writer, and states -> observations replay.

Layout (the one robomimic's released datasets use)::

    data/                       attrs: env_args (JSON string), total (number of samples)
      demo_<i>/                 attrs: num_samples (and optionally model_file, the MJCF XML)
        obs/<key>               (T, ...) per-step observations
        next_obs/<key>          (T, ...) observations after each action
        actions                 (T, A)
        states                  (T, S) flattened simulator states [time, qpos, qvel]
        rewards, dones          (T,)
        <extra>                 (T, ...) optional extra per-step arrays (e.g. actions_abs)
    mask/<filter_key>           array of demo names (bytes), e.g. mask/train, mask/valid

``env_args`` is ``{"env_name": ..., "type": 1, "env_kwargs": {...}}`` (type 1 = robosuite).

Example:
    >>> import tempfile, os, numpy as np
    >>> from dp_gym.data.robomimic import RobomimicEpisode, write_robomimic_hdf5, read_robomimic_hdf5
    >>> ep = RobomimicEpisode(obs={"object": np.zeros((3, 2), np.float32)}, actions=np.ones((3, 7), np.float32),
    ...                       states=np.zeros((3, 5)))
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.hdf5")
    >>> write_robomimic_hdf5(path, [ep, ep], env_args={"env_name": "Lift", "type": 1, "env_kwargs": {}})
    >>> data = read_robomimic_hdf5(path, obs_keys=["object"])
    >>> data.n_episodes, data.arrays["action"].shape
    (2, (6, 7))
    >>> read_robomimic_hdf5(path, obs_keys=["cube_pos"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    KeyError: "...demo_0: missing obs keys ['cube_pos']; available: ['object']"
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from dp_gym.checkpoint import atomic_write
from dp_gym.data.replay import EpisodeData
from dp_gym.utils.cli import option, parse_config, run_cli

__all__ = [
    "RobomimicEpisode",
    "write_robomimic_hdf5",
    "read_robomimic_hdf5",
    "read_env_args",
    "list_demos",
    "load_episode",
    "regenerate_observations",
    "replay_states_to_hdf5",
    "ENV_TYPE_ROBOSUITE",
    "abs_actions_to_rot6d",
    "merge_robomimic_hdf5",
    "main",
]

ENV_TYPE_ROBOSUITE = 1  # robomimic's EnvType.ROBOSUITE_TYPE
_DEMO_RE = re.compile(r"^demo_(\d+)$")


@dataclass
class RobomimicEpisode:
    """One demonstration. ``next_obs`` defaults to ``obs`` shifted by one (last frame repeated);
    ``rewards`` to zeros and ``dones`` to zeros with a 1 at the last step."""

    obs: dict[str, np.ndarray]
    actions: np.ndarray
    states: np.ndarray
    next_obs: dict[str, np.ndarray] | None = None
    rewards: np.ndarray | None = None
    dones: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    model_file: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # extra per-demo attributes (e.g. seed)

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions)
        if self.actions.ndim != 2:
            raise ValueError(f"actions must have shape (T, action_dim), got {self.actions.shape}")
        t = len(self.actions)
        if t == 0:
            raise ValueError("an episode needs at least one step")
        self.states = np.asarray(self.states)
        if self.states.ndim != 2 or len(self.states) != t:
            raise ValueError(f"states must have shape ({t}, state_dim), got {self.states.shape}")
        if not self.obs:
            raise ValueError("obs must hold at least one key")
        for name, group in (("obs", self.obs), ("next_obs", self.next_obs or {}), ("extras", self.extras)):
            for k, v in group.items():
                if len(v) != t:
                    raise ValueError(f"{name}[{k!r}] has {len(v)} steps, expected {t} (= len(actions))")
        if self.next_obs is None:
            self.next_obs = {k: np.concatenate([v[1:], v[-1:]], axis=0) for k, v in self.obs.items()}
        if self.rewards is None:
            self.rewards = np.zeros(t, dtype=np.float64)
        if self.dones is None:
            self.dones = np.zeros(t, dtype=np.int64)
            self.dones[-1] = 1
        if len(self.rewards) != t or len(self.dones) != t:
            raise ValueError(f"rewards and dones must have {t} steps, got {len(self.rewards)} and {len(self.dones)}")

    def __len__(self) -> int:
        return len(self.actions)


def _demo_sort_key(name: str) -> tuple[int, str]:
    m = _DEMO_RE.match(name)
    return (int(m.group(1)), name) if m else (1 << 62, name)


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robomimic HDF5 file not found: {path}")
    return path


def write_robomimic_hdf5(
    path: str | Path,
    episodes: Iterable[RobomimicEpisode],
    env_args: dict[str, Any],
    masks: dict[str, Sequence[int]] | None = None,
    compression: str | None = "gzip",
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write episodes as ``data/demo_0..``; atomic (temp file in the same folder, then rename).

    ``masks`` maps a filter key to demo indices (e.g. ``{"train": [0, 1], "valid": [2]}``).
    Image arrays (uint8, 4-D) are chunked per frame and compressed with ``compression``.
    """
    import h5py

    path = Path(path)
    if "env_name" not in env_args:
        raise KeyError(f"env_args must contain 'env_name' (and 'type', 'env_kwargs'); got keys {sorted(env_args)}")

    def write(tmp: str) -> None:
        total = 0
        names: list[str] = []
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")

            def put(group, key: str, arr: np.ndarray) -> None:
                arr = np.asarray(arr)
                if arr.dtype == np.uint8 and arr.ndim == 4:
                    group.create_dataset(key, data=arr, chunks=(1,) + arr.shape[1:], compression=compression)
                else:
                    group.create_dataset(key, data=arr)

            for i, ep in enumerate(episodes):
                name = f"demo_{i}"
                g = data.create_group(name)
                for k, v in ep.obs.items():
                    put(g, f"obs/{k}", v)
                for k, v in (ep.next_obs or {}).items():
                    put(g, f"next_obs/{k}", v)
                put(g, "actions", ep.actions)
                put(g, "states", ep.states)
                put(g, "rewards", ep.rewards)
                put(g, "dones", ep.dones)
                for k, v in ep.extras.items():
                    if k in ("obs", "next_obs", "actions", "states", "rewards", "dones"):
                        raise ValueError(f"extra array name {k!r} clashes with a standard robomimic key")
                    put(g, k, v)
                for k, v in ep.attrs.items():
                    if k in ("num_samples", "model_file"):
                        raise ValueError(f"demo attribute {k!r} is set by the writer itself")
                    g.attrs[k] = v
                g.attrs["num_samples"] = len(ep)
                if ep.model_file is not None:
                    g.attrs["model_file"] = ep.model_file
                total += len(ep)
                names.append(name)
            if not names:
                raise ValueError("no episodes to write")
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(env_args)
            for k, v in (attrs or {}).items():
                data.attrs[k] = v
            if masks:
                mask = f.create_group("mask")
                for key, idx in masks.items():
                    bad = [j for j in idx if not 0 <= j < len(names)]
                    if bad:
                        raise IndexError(f"mask {key!r}: demo indices {bad} out of range 0..{len(names) - 1}")
                    mask.create_dataset(key, data=np.array([names[j] for j in idx], dtype="S"))

    atomic_write(path, write)  # temp file in the same folder, fsync, rename


def read_env_args(path: str | Path) -> dict[str, Any]:
    """The ``data`` group's ``env_args`` attribute, parsed from JSON."""
    import h5py

    with h5py.File(_require_file(path), "r") as f:
        if "data" not in f or "env_args" not in f["data"].attrs:
            raise KeyError(f"{path}: not a robomimic file (missing data/ group or its env_args attribute)")
        return json.loads(f["data"].attrs["env_args"])


def list_demos(path: str | Path, filter_key: str | None = None) -> list[str]:
    """Demo names in numeric order, optionally restricted to ``mask/<filter_key>``."""
    import h5py

    with h5py.File(_require_file(path), "r") as f:
        return _list_demos(f, path, filter_key)


def _list_demos(f, path, filter_key: str | None) -> list[str]:
    if "data" not in f:
        raise KeyError(f"{path}: not a robomimic file (missing data/ group)")
    if filter_key is None:
        names = list(f["data"].keys())
    else:
        if "mask" not in f or filter_key not in f["mask"]:
            available = sorted(f["mask"].keys()) if "mask" in f else []
            raise KeyError(f"{path}: filter key {filter_key!r} not found under mask/; available: {available}")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["mask"][filter_key][:]]
        missing = [n for n in names if n not in f["data"]]
        if missing:
            raise KeyError(f"{path}: mask/{filter_key} names demos that do not exist: {missing[:5]}")
    if not names:
        raise ValueError(f"{path}: no demos" + (f" in mask/{filter_key}" if filter_key else ""))
    return sorted(names, key=_demo_sort_key)


def load_episode(path: str | Path, demo: str) -> dict[str, Any]:
    """One demo fully in memory: ``{"obs": {...}, "next_obs": {...}, "actions", "states", "rewards",
    "dones", <extras>..., "attrs": {...}}``."""
    import h5py

    with h5py.File(_require_file(path), "r") as f:
        if f"data/{demo}" not in f:
            raise KeyError(f"{path}: no demo {demo!r}")
        g = f["data"][demo]
        out: dict[str, Any] = {"attrs": dict(g.attrs)}
        for k in g.keys():
            if isinstance(g[k], h5py.Group):
                out[k] = {kk: g[k][kk][:] for kk in g[k].keys()}
            else:
                out[k] = g[k][:]
        return out


def abs_actions_to_rot6d(actions: np.ndarray) -> np.ndarray:
    """Absolute actions ``[pos 3, axis-angle 3, gripper 1]`` per arm (robomimic's convention,
    ``(T, 7 * n_arms)``) -> ``[pos 3, rot6d 6, gripper 1]`` per arm (``(T, 10 * n_arms)``), the
    action layout of the env's ``absolute`` mode.

    Example:
        >>> abs_actions_to_rot6d(np.zeros((2, 7))).shape
        (2, 10)
        >>> abs_actions_to_rot6d(np.zeros((2, 6)))
        Traceback (most recent call last):
        ...
        ValueError: absolute actions must have shape (T, 7 * n_arms), got (2, 6)
    """
    from dp_gym.utils.rotation import axis_angle_to_rot6d

    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] % 7 != 0 or a.shape[1] == 0:
        raise ValueError(f"absolute actions must have shape (T, 7 * n_arms), got {a.shape}")
    per_arm = a.reshape(len(a), -1, 7)
    out = np.concatenate([per_arm[..., :3], axis_angle_to_rot6d(per_arm[..., 3:6]), per_arm[..., 6:]], axis=-1)
    return out.reshape(len(a), -1).astype(np.float32)


def read_robomimic_hdf5(
    path: str | Path,
    obs_keys: Sequence[str],
    action_key: str = "actions",
    filter_key: str | None = None,
    max_episodes: int | None = None,
    abs_rot6d: bool = False,
) -> EpisodeData:
    """Read demos into an :class:`EpisodeData` with ``arrays[k]`` for each obs key and ``action``.

    Low-dim arrays become float32, images stay uint8. ``action_key`` selects the per-demo action
    array (``actions`` or e.g. our ``actions_abs``); ``abs_rot6d=True`` converts absolute
    axis-angle actions to the env's rot6d layout (:func:`abs_actions_to_rot6d`). ``meta`` holds the
    source path, ``env_args`` and the demo names.
    """
    import h5py

    path = _require_file(path)
    if not obs_keys:
        raise ValueError("obs_keys must name at least one observation key")
    with h5py.File(path, "r") as f:
        names = _list_demos(f, path, filter_key)
        if max_episodes is not None:
            names = names[: int(max_episodes)]
        cols: dict[str, list[np.ndarray]] = {k: [] for k in obs_keys}
        cols["action"] = []
        ends: list[int] = []
        n = 0
        for name in names:
            g = f["data"][name]
            if "obs" not in g:
                raise KeyError(f"{path}: data/{name} has no obs/ group")
            missing = [k for k in obs_keys if k not in g["obs"]]
            if missing:
                raise KeyError(f"{path}: data/{name}: missing obs keys {missing}; available: {sorted(g['obs'].keys())}")
            if action_key not in g:
                raise KeyError(f"{path}: data/{name}: missing {action_key!r}; available: {sorted(g.keys())}")
            act = g[action_key][:]
            t = len(act)
            for k in obs_keys:
                arr = g["obs"][k][:]
                if len(arr) != t:
                    raise ValueError(f"{path}: data/{name}/obs/{k} has {len(arr)} steps but {action_key} has {t}")
                cols[k].append(arr if arr.dtype == np.uint8 else arr.astype(np.float32))
            cols["action"].append(abs_actions_to_rot6d(act) if abs_rot6d else act.astype(np.float32))
            n += t
            ends.append(n)
        env_args = json.loads(f["data"].attrs["env_args"]) if "env_args" in f["data"].attrs else {}
    arrays = {k: np.concatenate(v, axis=0) for k, v in cols.items()}
    return EpisodeData(arrays, np.asarray(ends), meta={"source": str(path), "env_args": env_args, "demos": names})


def _extra_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in ("num_samples", "model_file")}


def regenerate_observations(env, states: np.ndarray) -> dict[str, np.ndarray]:
    """Observations of ``env`` (a :class:`~dp_gym.envs.robosuite_env.RobosuiteEnv`, e.g. built with
    cameras) at each stored simulator state, like robomimic's states-to-obs conversion."""
    states = np.asarray(states)
    if states.ndim != 2 or len(states) == 0:
        raise ValueError(f"states must have shape (T, state_dim) with T >= 1, got {states.shape}")
    frames = [env.set_state(s) for s in states]
    return {k: np.stack([fr[k] for fr in frames]) for k in frames[0]}


def replay_states_to_hdf5(
    src: str | Path,
    dst: str | Path,
    cameras: Sequence[str] = ("agentview", "robot0_eye_in_hand"),
    image_size: int = 84,
    obs_keys: Sequence[str] | None = None,
    filter_key: str | None = None,
    max_episodes: int | None = None,
    progress: bool = True,
) -> int:
    """Rewrite a robomimic file with observations regenerated from its ``states`` (adds camera
    images). ``next_obs`` is ``obs`` shifted by one with the last frame repeated. The task comes from
    ``env_args['env_name']``. Returns the number of demos written."""
    from dp_gym.envs.robosuite_env import ROBOSUITE_TASKS, RobosuiteEnv

    src = _require_file(src)
    env_args = read_env_args(src)
    task = env_args.get("env_name")
    if task not in ROBOSUITE_TASKS:
        raise ValueError(f"{src}: env_args['env_name']={task!r} is not one of {sorted(ROBOSUITE_TASKS)}")
    names = list_demos(src, filter_key)[: max_episodes]
    env = RobosuiteEnv(task=task, obs_keys=obs_keys, cameras=cameras, image_size=image_size)
    try:
        def episodes():
            it = names
            if progress:
                from tqdm import tqdm

                it = tqdm(names, desc=f"replay {task}", unit="demo")
            for name in it:
                ep = load_episode(src, name)
                obs = regenerate_observations(env, ep["states"])
                extras = {k: v for k, v in ep.items()
                          if k not in ("obs", "next_obs", "actions", "states", "rewards", "dones", "attrs")
                          and isinstance(v, np.ndarray)}
                yield RobomimicEpisode(obs=obs, actions=ep["actions"], states=ep["states"],
                                       rewards=ep.get("rewards"), dones=ep.get("dones"), extras=extras,
                                       attrs=_extra_attrs(ep["attrs"]))

        new_args = {**env_args, "env_kwargs": {**env_args.get("env_kwargs", {}), "camera_names": list(cameras),
                                               "camera_heights": image_size, "camera_widths": image_size}}
        write_robomimic_hdf5(dst, episodes(), env_args=new_args)
    finally:
        env.close()
    return len(names)


def merge_robomimic_hdf5(sources: Sequence[str | Path], dst: str | Path) -> int:
    """Concatenate the demos of several files (same ``env_args['env_name']``) into ``dst``, renumbered
    ``demo_0..`` in source order; ``env_args`` is taken from the first file, masks are dropped.
    Returns the number of demos written."""
    if not sources:
        raise ValueError("no source files to merge")
    args = [read_env_args(s) for s in sources]
    names = {a.get("env_name") for a in args}
    if len(names) != 1:
        raise ValueError(f"cannot merge files of different tasks: env_names {sorted(map(str, names))}")

    def episodes():
        for src in sources:
            for name in list_demos(src):
                ep = load_episode(src, name)
                extras = {k: v for k, v in ep.items()
                          if k not in ("obs", "next_obs", "actions", "states", "rewards", "dones", "attrs")
                          and isinstance(v, np.ndarray)}
                yield RobomimicEpisode(obs=ep["obs"], next_obs=ep.get("next_obs"), actions=ep["actions"],
                                       states=ep["states"], rewards=ep.get("rewards"), dones=ep.get("dones"),
                                       extras=extras, model_file=ep["attrs"].get("model_file"),
                                       attrs=_extra_attrs(ep["attrs"]))

    write_robomimic_hdf5(dst, episodes(), env_args=args[0], attrs={"merged_from": json.dumps([str(s) for s in sources])})
    return len(list_demos(dst))


@dataclass
class ReplayConfig:
    """``python -m dp_gym.data.robomimic SRC DST``: regenerate observations (with camera images) from
    the stored simulator states of SRC into DST."""

    src: str = option(help="robomimic HDF5 file with stored simulator states", positional=True)
    dst: str = option(help="HDF5 file to write, observations regenerated with the cameras", positional=True)
    cameras: str = option("agentview,robot0_eye_in_hand", "comma-separated cameras to render")
    image_size: int = option(84, "camera image height and width")
    filter_key: str | None = option(None, "only the demos of this mask/ filter key; unset: all")
    max_episodes: int | None = option(None, "at most this many demos; unset: all")

    def __post_init__(self) -> None:
        if self.image_size < 1 or (self.max_episodes is not None and self.max_episodes < 1):
            raise ValueError(f"--image-size and --max-episodes must be >= 1, got {self.image_size} and {self.max_episodes}")
        if not Path(self.src).is_file():
            raise FileNotFoundError(f"robomimic file not found: {self.src}")


def _main(argv: list[str]) -> int:
    args = parse_config(ReplayConfig, argv, description=ReplayConfig.__doc__, prog="python -m dp_gym.data.robomimic")
    cams = tuple(c for c in args.cameras.split(",") if c)
    n = replay_states_to_hdf5(args.src, args.dst, cameras=cams, image_size=args.image_size,
                              filter_key=args.filter_key, max_episodes=args.max_episodes)
    print(f"wrote {n} demos with cameras {list(cams)} to {args.dst}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
