"""Where datasets live: ``--data-dir`` flag, else ``$DP_GYM_DATA_DIR``, else ``./data``."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DP_GYM_DATA_DIR"

# Where each known dataset can be obtained, for the error message of a missing one.
DATASET_SOURCES = {
    "pusht/pusht_cchi_v7_replay.zarr": (
        "https://diffusion-policy.cs.columbia.edu/data/training/pusht.zip "
        "(unzip; the replay buffer is pusht/pusht_cchi_v7_replay.zarr)"
    ),
    "kitchen/kitchen_complete-v0.hdf5": (
        "the D4RL kitchen-complete-v0 release (http://rail.eecs.berkeley.edu/datasets/offline_rl/"
        "kitchen/kitchen_complete-v0.hdf5) or Minari's D4RL/kitchen/complete-v2"
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing; the message says where it was looked for and where to get it."""


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Resolve the data directory: explicit argument, then ``$DP_GYM_DATA_DIR``, then ``./data``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path("data")


def dataset_path(relative: str, override: str | os.PathLike | None = None) -> Path:
    """Path of a dataset under the data directory; raise a clear error if it is missing. Known
    datasets are checked against their shipped SHA-256 manifest on first use
    (:mod:`dp_gym.data.integrity`)."""
    root = data_dir(override)
    path = root / relative
    if not path.exists():
        source = DATASET_SOURCES.get(relative, "see the README's Data section")
        raise DatasetNotFoundError(
            f"dataset {relative!r} not found: looked for {path.resolve()} "
            f"(data dir from {'--data-dir' if override is not None else ('$' + DATA_DIR_ENV if os.environ.get(DATA_DIR_ENV) else 'the default ./data')}). "
            f"Set --data-dir or ${DATA_DIR_ENV} to the folder holding it. It can be obtained from: {source}"
        )
    from dp_gym.data.integrity import MANIFESTS, verify_dataset

    if relative in MANIFESTS:
        verify_dataset(path, MANIFESTS[relative])
    return path
