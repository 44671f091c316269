"""Reader for D4RL-format HDF5 datasets (``observations``, ``actions``, ``terminals``, ``timeouts``).

D4RL stores all transitions of all episodes back to back; an episode ends at a frame whose
``terminals`` or ``timeouts`` flag is set. Frames after the last flagged one (an unfinished
episode) are kept as a final episode only if ``keep_unfinished`` is true.

Example:
    >>> ep = read_d4rl_hdf5(dataset_path("kitchen/kitchen_complete-v0.hdf5"))  # doctest: +SKIP
    >>> ep.n_episodes, ep.arrays["obs"].shape, ep.arrays["action"].shape  # doctest: +SKIP
    (19, (3680, 60), (3680, 9))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dp_gym.data.replay import EpisodeData

REQUIRED_KEYS = ("observations", "actions", "terminals")


def episode_ends_from_flags(terminals: np.ndarray, timeouts: np.ndarray | None = None,
                            keep_unfinished: bool = False) -> np.ndarray:
    """Exclusive episode end indices from D4RL's per-frame ``terminals`` / ``timeouts`` flags.

    Example:
        >>> episode_ends_from_flags(np.array([0, 1, 0, 0, 1, 0], bool), keep_unfinished=True).tolist()
        [2, 5, 6]
    """
    done = np.asarray(terminals, dtype=bool).copy()
    if timeouts is not None:
        timeouts = np.asarray(timeouts, dtype=bool)
        if timeouts.shape != done.shape:
            raise ValueError(f"timeouts has shape {timeouts.shape} but terminals has {done.shape}")
        done |= timeouts
    ends = np.flatnonzero(done) + 1
    n = len(done)
    if keep_unfinished and (len(ends) == 0 or ends[-1] != n):
        ends = np.append(ends, n)
    if len(ends) == 0:
        raise ValueError("no episode end found: neither terminals nor timeouts are set on any frame")
    return ends.astype(np.int64)


def read_d4rl_hdf5(path: str | Path, keep_unfinished: bool = False) -> EpisodeData:
    """Read a D4RL HDF5 file into ``EpisodeData`` with arrays ``obs`` (float32) and ``action`` (float32).

    Also copies ``rewards`` (as ``reward``) when present. Raises ``FileNotFoundError`` for a missing
    file and ``KeyError`` naming the missing datasets for a file that is not in D4RL format.
    """
    import h5py  # optional dependency ([kitchen] extra)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"D4RL HDF5 file not found: {path}")
    with h5py.File(path, "r") as f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise KeyError(f"{path} is not a D4RL dataset: missing {missing} (expected {list(REQUIRED_KEYS)} "
                           f"and optionally 'timeouts'); found {sorted(f.keys())}")
        obs = np.asarray(f["observations"][:], dtype=np.float32)
        action = np.asarray(f["actions"][:], dtype=np.float32)
        terminals = np.asarray(f["terminals"][:], dtype=bool)
        timeouts = np.asarray(f["timeouts"][:], dtype=bool) if "timeouts" in f else None
        reward = np.asarray(f["rewards"][:], dtype=np.float32) if "rewards" in f else None
    n = len(obs)
    if obs.ndim != 2 or action.ndim != 2 or len(action) != n or terminals.shape != (n,):
        raise ValueError(f"{path}: expected observations (N, obs_dim), actions (N, act_dim), terminals (N,); "
                         f"got {obs.shape}, {action.shape}, {terminals.shape}")
    ends = episode_ends_from_flags(terminals, timeouts, keep_unfinished)
    n_used = int(ends[-1])
    arrays = {"obs": obs[:n_used], "action": action[:n_used]}
    if reward is not None and reward.shape == (n,):
        arrays["reward"] = reward[:n_used]
    return EpisodeData(arrays, ends, meta={"source": str(path), "format": "d4rl-hdf5", "dropped_frames": n - n_used})
