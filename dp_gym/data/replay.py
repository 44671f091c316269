"""Episode storage: a dict of per-frame arrays plus ``episode_ends``, and the reader for the
Diffusion Policy zarr replay layout (``data/<key>``, ``meta/episode_ends``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class EpisodeData:
    """Concatenated episodes. ``arrays[k]`` has the frames on axis 0; ``episode_ends[i]`` is the
    exclusive end frame of episode ``i`` (strictly increasing, last one == number of frames)."""

    arrays: dict[str, np.ndarray]
    episode_ends: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ends = np.asarray(self.episode_ends, dtype=np.int64)
        if ends.ndim != 1 or len(ends) == 0:
            raise ValueError(f"episode_ends must be a non-empty 1-D array, got shape {ends.shape}")
        if np.any(np.diff(np.concatenate([[0], ends])) <= 0):
            raise ValueError("episode_ends must be strictly increasing and positive (no empty episodes)")
        n = int(ends[-1])
        for key, arr in self.arrays.items():
            if len(arr) != n:
                raise ValueError(f"array {key!r} has {len(arr)} frames but episode_ends[-1] = {n}")
            if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
                frame = int(np.flatnonzero(~np.isfinite(arr.reshape(n, -1)).all(axis=1))[0])
                episode = int(np.searchsorted(ends, frame, side="right"))
                source = f"{self.meta['source']}: " if self.meta.get("source") else ""
                raise ValueError(f"{source}array {key!r} holds NaN or inf at frame {frame} (episode {episode}); "
                                 "the dataset is refused")
        self.episode_ends = ends

    @property
    def n_frames(self) -> int:
        return int(self.episode_ends[-1])

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]])

    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends]))


def read_zarr_replay(path: str | Path, keys: list[str] | None = None, uint8_keys: tuple[str, ...] = ()) -> EpisodeData:
    """Read a Diffusion Policy replay buffer (``data/<key>``, ``meta/episode_ends``) fully into memory.

    ``uint8_keys``: image arrays stored as float 0-255 (Push-T's ``data/img``) are converted to
    uint8 block by block (4x less memory than float32); values that are not whole numbers in
    0..255 raise instead of being rounded silently.

    zarr silently returns the fill value (zeros) for chunks whose files are missing, which would
    corrupt training without any error. We therefore check that every chunk of every array we read
    is present in the store before reading it, and refuse otherwise.
    """
    import zarr  # optional dependency ([pusht] extra)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"zarr replay buffer not found: {path}")
    root = zarr.open(str(path), mode="r")
    for group in ("data", "meta"):
        if group not in root:
            raise KeyError(f"{path} is not a replay buffer: missing group {group!r} (expected data/<key> and meta/episode_ends)")
    if "episode_ends" not in root["meta"]:
        raise KeyError(f"{path}: missing meta/episode_ends")
    available = sorted(root["data"].array_keys())
    keys = available if keys is None else list(keys)
    missing = [k for k in keys if k not in available]
    if missing:
        raise KeyError(f"{path}: missing data keys {missing}; available: {available}")

    def read(arr, a: int | None = None, b: int | None = None) -> np.ndarray:
        try:
            return arr[a:b]
        except Exception as e:  # the codec's own error type (blosc, zlib, ...) varies
            for idx, key in _chunk_keys(arr):  # name the chunk that does not decode
                try:
                    arr.get_block_selection(idx)
                except Exception:
                    raise IOError(f"{path / key}: chunk cannot be decoded ({type(e).__name__}: {e}); the dataset is "
                                  "corrupt, re-download or re-copy it") from e
            raise

    def load(arr, name: str) -> np.ndarray:
        _check_all_chunks_present(arr, f"{path}/{name}")
        if name.removeprefix("data/") not in uint8_keys or arr.dtype == np.uint8:
            return read(arr)
        out = np.empty(arr.shape, dtype=np.uint8)
        step = max(1, arr.chunks[0])
        for a in range(0, arr.shape[0], step):
            block = read(arr, a, a + step)
            if block.min() < 0 or block.max() > 255 or not np.array_equal(block, np.round(block)):
                raise ValueError(f"{path}/{name}: frames {a}..{a + len(block)} are not whole numbers in 0..255; cannot store as uint8")
            out[a : a + step] = block
        return out

    ends = load(root["meta"]["episode_ends"], "meta/episode_ends").astype(np.int64)
    arrays = {k: load(root["data"][k], f"data/{k}") for k in keys}
    return EpisodeData(arrays=arrays, episode_ends=ends, meta={"source": str(path)})


def _chunk_keys(arr):
    """``(chunk index, store key)`` of every chunk of a zarr v2 array."""
    prefix = arr.path + "/" if arr.path else ""
    sep = getattr(arr, "_dimension_separator", None) or "."
    if arr.shape == ():
        yield (), prefix + "0"
        return
    grid = [math.ceil(s / c) if s else 0 for s, c in zip(arr.shape, arr.chunks)]
    for idx in np.ndindex(*grid):
        yield idx, prefix + sep.join(str(i) for i in idx)


def _check_all_chunks_present(arr, name: str) -> None:
    store = arr.store
    missing = []
    for _, key in _chunk_keys(arr):
        if key not in store:
            missing.append(key)
            if len(missing) >= 5:
                break
    if missing:
        raise IOError(
            f"{name}: chunk files missing from the zarr store (e.g. {missing}); zarr would silently "
            "fill them with zeros, so the dataset is refused. Re-download or re-copy it."
        )
