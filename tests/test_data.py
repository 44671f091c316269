"""Data pipeline: episode windows, train/val split, SequenceDataset, min-max normaliser, zarr reader."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_gym.data.normalizer import MinMaxNormalizer
from dp_gym.data.replay import EpisodeData, read_zarr_replay
from dp_gym.data.sequence import SequenceDataset, split_episodes, window_frame_indices
from dp_gym.data.integrity import SKIP_ENV, DatasetIntegrityError
from dp_gym.paths import DatasetNotFoundError, dataset_path

zarr = pytest.importorskip("zarr")

PUSHT_URL = "https://diffusion-policy.cs.columbia.edu/data/training/pusht.zip"


# --- window_frame_indices -------------------------------------------------------------------

def test_window_indices_exact_two_episodes():
    # Episode 0 = frames 0..2 (L=3), episode 1 = frames 3..7 (L=5).
    idx = window_frame_indices(np.array([3, 8]), horizon=4, pad_before=1, pad_after=2)
    expected = np.array([
        # episode 0: starts s = -1, 0, 1
        [0, 0, 1, 2],
        [0, 1, 2, 2],
        [1, 2, 2, 2],
        # episode 1: starts s = -1 .. 3 (offset by 3)
        [3, 3, 4, 5],
        [3, 4, 5, 6],
        [4, 5, 6, 7],
        [5, 6, 7, 7],
        [6, 7, 7, 7],
    ])
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, expected)


@pytest.mark.parametrize("horizon,pb,pa", [(4, 1, 2), (3, 0, 0), (6, 2, 3), (1, 0, 0), (5, 4, 0)])
def test_window_indices_properties(horizon, pb, pa):
    lengths = np.array([3, 5, 9, 1, 12])
    ends = np.cumsum(lengths)
    starts = ends - lengths
    idx = window_frame_indices(ends, horizon, pb, pa)
    assert idx.shape[1] == horizon
    # Windows come out episode by episode; count per episode = L - horizon + pb + pa + 1 (or 0).
    counts = np.maximum(lengths - horizon + pb + pa + 1, 0)
    assert len(idx) == counts.sum()
    row = 0
    for a, b, n in zip(starts, ends, counts):
        w = idx[row : row + n]
        row += n
        # never crossing episodes
        assert np.all((w >= a) & (w < b))
        # consecutive in time, except repeated edge frames
        d = np.diff(w, axis=1)
        assert np.all((d == 0) | (d == 1))
        # every frame of the episode appears somewhere (all frames are usable)
        if n:
            assert set(np.unique(w)) == set(range(a, b))
            # first window starts pb before the episode (so its first pb+1 entries are the first frame)
            assert np.all(w[0, : min(pb + 1, horizon)] == a)
            assert np.all(w[-1, max(horizon - pa - 1, 0) :] == b - 1)


def test_window_indices_short_episodes_skipped_and_mask():
    ends = np.array([2, 7, 9])  # lengths 2, 5, 2
    idx = window_frame_indices(ends, horizon=4, pad_before=0, pad_after=1)  # needs L >= 3
    assert len(idx) == 5 - 4 + 0 + 1 + 1  # only the middle episode
    assert idx.min() >= 2 and idx.max() <= 6
    masked = window_frame_indices(ends, horizon=4, pad_before=0, pad_after=1, episode_mask=np.array([True, False, True]))
    assert masked.shape == (0, 4)
    with pytest.raises(ValueError):
        window_frame_indices(ends, horizon=0, pad_before=0, pad_after=0)
    with pytest.raises(ValueError):
        window_frame_indices(ends, horizon=2, pad_before=-1, pad_after=0)


# --- split_episodes -------------------------------------------------------------------------

def test_split_episodes_deterministic_and_counts():
    a = split_episodes(100, 0.1, seed=3)
    b = split_episodes(100, 0.1, seed=3)
    c = split_episodes(100, 0.1, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == bool and a.shape == (100,)
    assert (~a).sum() == 10  # validation episodes
    # train / val are disjoint and cover everything by construction of a boolean mask
    train_ids, val_ids = set(np.flatnonzero(a)), set(np.flatnonzero(~a))
    assert not train_ids & val_ids and len(train_ids | val_ids) == 100
    # at least one val episode with a tiny ratio, never all of them
    assert (~split_episodes(10, 0.01)).sum() == 1
    assert (~split_episodes(2, 0.9)).sum() == 1
    assert split_episodes(10, 0.0).all()
    assert split_episodes(1, 0.5).all()
    with pytest.raises(ValueError):
        split_episodes(10, 1.0)
    with pytest.raises(ValueError):
        split_episodes(10, -0.1)


# --- SequenceDataset ------------------------------------------------------------------------

def _toy_data(n_frames=20):
    obs = torch.arange(n_frames * 3, dtype=torch.float32).reshape(n_frames, 3)
    act = -torch.arange(n_frames * 2, dtype=torch.float32).reshape(n_frames, 2)
    return {"obs": obs, "action": act}


def test_sequence_dataset_shapes_and_values():
    data = _toy_data(20)
    ends = np.array([6, 13, 20])
    H, To, Ta = 6, 2, 3
    ds = SequenceDataset(data, ends, horizon=H, n_obs_steps=To, n_action_steps=Ta, obs_keys=["obs"])
    idx = window_frame_indices(ends, H, To - 1, Ta - 1)
    assert len(ds) == len(idx) == sum(L - H + (To - 1) + (Ta - 1) + 1 for L in (6, 7, 7))
    ids = torch.tensor([0, 3, len(ds) - 1, 7])
    batch = ds.get(ids)
    assert batch["obs"].shape == (4, To, 3)
    assert batch["action"].shape == (4, H, 2)
    sel = idx[ids.numpy()]
    torch.testing.assert_close(batch["obs"], data["obs"][torch.as_tensor(sel[:, :To])])
    torch.testing.assert_close(batch["action"], data["action"][torch.as_tensor(sel)])
    # the first window of episode 0 repeats frame 0 as padding for the observation history
    torch.testing.assert_close(ds.get(torch.tensor([0]))["obs"][0], data["obs"][[0, 0]])

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s1, s2 = ds.sample(8, g1), ds.sample(8, g2)
    torch.testing.assert_close(s1["action"], s2["action"])
    assert s1["obs"].shape == (8, To, 3)

    batches = list(ds.epoch(4, torch.Generator().manual_seed(0)))
    assert len(batches) == len(ds) // 4


def test_sequence_dataset_errors():
    data = _toy_data(10)
    with pytest.raises(ValueError, match="too short"):
        SequenceDataset(data, np.array([10]), horizon=4, n_obs_steps=2, n_action_steps=4, obs_keys=["obs"])
    with pytest.raises(ValueError, match="no training windows"):
        SequenceDataset(data, np.array([10]), horizon=8, n_obs_steps=1, n_action_steps=1, obs_keys=["obs"],
                        episode_mask=np.array([False]))


# --- MinMaxNormalizer -----------------------------------------------------------------------

def test_normalizer_round_trip_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=g) * torch.tensor([1.0, 10.0, 0.01, 100.0]) + torch.tensor([0.0, -5.0, 3.0, 50.0])
    n = MinMaxNormalizer.fit(x)
    y = n.normalize(x)
    torch.testing.assert_close(y.min(0).values, -torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.max(0).values, torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.unnormalize(y), x, atol=1e-4, rtol=1e-5)
    # data min / max map exactly to -1 / +1
    torch.testing.assert_close(n.normalize(x.min(0).values[None]), -torch.ones(1, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.normalize(x.max(0).values[None]), torch.ones(1, 4), atol=1e-5, rtol=0)
    # works on (B, T, D) too
    z = x.reshape(50, 10, 4)
    torch.testing.assert_close(n.unnormalize(n.normalize(z)), z, atol=1e-4, rtol=1e-5)


def test_normalizer_constant_dimension():
    x = torch.stack([torch.linspace(0, 1, 11), torch.full((11,), 7.5)], dim=-1)
    n = MinMaxNormalizer.fit(x)
    y = n.normalize(x)
    assert torch.all(y[:, 1] == 0)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(n.unnormalize(y), x)
    # the constant dim is only centred: a value 1 above the constant maps to +1
    torch.testing.assert_close(n.normalize(torch.tensor([[0.0, 8.5]]))[0, 1], torch.tensor(1.0))


def test_normalizer_errors():
    with pytest.raises(ValueError, match="NaN"):
        MinMaxNormalizer.fit(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        MinMaxNormalizer.fit(torch.tensor([[0.0], [float("inf")]]))
    n = MinMaxNormalizer.fit(torch.randn(10, 3))
    with pytest.raises(ValueError, match="last dimension 3"):
        n.normalize(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="last dimension 3"):
        n.unnormalize(torch.zeros(4, 5))


def test_normalizer_state_dict_round_trip():
    n = MinMaxNormalizer.fit(torch.randn(30, 2) * 4)
    m = MinMaxNormalizer(2)
    m.load_state_dict(n.state_dict())
    x = torch.randn(5, 2)
    torch.testing.assert_close(m.normalize(x), n.normalize(x))


# --- EpisodeData ----------------------------------------------------------------------------

def test_episode_data_properties():
    ep = EpisodeData({"a": np.zeros((10, 2))}, np.array([4, 10]))
    assert ep.n_frames == 10 and ep.n_episodes == 2
    np.testing.assert_array_equal(ep.episode_starts, [0, 4])
    np.testing.assert_array_equal(ep.episode_lengths(), [4, 6])
    assert ep.episode_ends.dtype == np.int64


@pytest.mark.parametrize(
    "ends,n,match",
    [
        ([], 0, "non-empty"),
        ([[3, 6]], 6, "non-empty 1-D"),
        ([3, 3, 6], 6, "strictly increasing"),
        ([4, 2, 6], 6, "strictly increasing"),
        ([0, 6], 6, "strictly increasing"),
        ([3, 6], 7, "has 7 frames"),
    ],
)
def test_episode_data_validation(ends, n, match):
    with pytest.raises(ValueError, match=match):
        EpisodeData({"a": np.zeros((n, 2))}, np.array(ends))


# --- zarr replay reader ---------------------------------------------------------------------

def _write_replay(path: Path, sep: str = ".", with_meta: bool = True):
    rng = np.random.default_rng(0)
    action = rng.normal(size=(23, 2)).astype(np.float32)
    obs = rng.normal(size=(23, 5)).astype(np.float32)
    ends = np.array([7, 15, 23], dtype=np.int64)
    root = zarr.open_group(str(path), mode="w")
    data = root.create_group("data")
    data.create_dataset("action", data=action, chunks=(5, 2), dimension_separator=sep)
    data.create_dataset("obs", data=obs, chunks=(10, 5), dimension_separator=sep)
    if with_meta:
        root.create_group("meta").create_dataset("episode_ends", data=ends, chunks=(10,), dimension_separator=sep)
    return action, obs, ends


@pytest.mark.parametrize("sep", [".", "/"])
def test_zarr_round_trip(tmp_path, sep):
    path = tmp_path / "replay.zarr"
    action, obs, ends = _write_replay(path, sep)
    ep = read_zarr_replay(path)
    assert set(ep.arrays) == {"action", "obs"}
    np.testing.assert_array_equal(ep.arrays["action"], action)
    np.testing.assert_array_equal(ep.arrays["obs"], obs)
    np.testing.assert_array_equal(ep.episode_ends, ends)
    assert ep.meta["source"] == str(path)
    only = read_zarr_replay(path, keys=["action"])
    assert set(only.arrays) == {"action"}


@pytest.mark.parametrize("sep", [".", "/"])
def test_zarr_missing_chunk_refused(tmp_path, sep):
    path = tmp_path / "replay.zarr"
    _write_replay(path, sep)
    chunk = path / "data" / "action" / ("2.0" if sep == "." else os.path.join("2", "0"))
    assert chunk.is_file(), sorted(p.name for p in (path / "data" / "action").iterdir())
    chunk.unlink()
    # zarr itself silently returns zeros here ...
    assert np.all(zarr.open(str(path), mode="r")["data/action"][10:15] == 0)
    # ... the reader refuses
    with pytest.raises(IOError, match=r"(?i)missing") as exc:
        read_zarr_replay(path)
    msg = str(exc.value)
    assert "data/action" in msg and "chunk" in msg
    # reading only the intact key still works
    assert read_zarr_replay(path, keys=["obs"]).n_frames == 23


def test_zarr_missing_episode_ends_chunk_refused(tmp_path):
    path = tmp_path / "replay.zarr"
    _write_replay(path)
    (path / "meta" / "episode_ends" / "0").unlink()
    with pytest.raises(IOError, match="meta/episode_ends"):
        read_zarr_replay(path)


def test_zarr_missing_key_and_groups(tmp_path):
    path = tmp_path / "replay.zarr"
    _write_replay(path)
    with pytest.raises(KeyError, match=r"missing data keys \['state'\].*available: \['action', 'obs'\]"):
        read_zarr_replay(path, keys=["action", "state"])
    with pytest.raises(FileNotFoundError, match="not found"):
        read_zarr_replay(tmp_path / "nope.zarr")
    no_meta = tmp_path / "no_meta.zarr"
    _write_replay(no_meta, with_meta=False)
    with pytest.raises(KeyError, match="missing group 'meta'"):
        read_zarr_replay(no_meta)
    no_ends = tmp_path / "no_ends.zarr"
    _write_replay(no_ends, with_meta=False)
    zarr.open_group(str(no_ends), mode="a").create_group("meta")
    with pytest.raises(KeyError, match="meta/episode_ends"):
        read_zarr_replay(no_ends)


# --- paths ----------------------------------------------------------------------------------

def test_dataset_path_error_message(tmp_path, monkeypatch):
    monkeypatch.delenv("DP_GYM_DATA_DIR", raising=False)
    rel = "pusht/pusht_cchi_v7_replay.zarr"
    with pytest.raises(DatasetNotFoundError) as exc:
        dataset_path(rel, tmp_path)
    msg = str(exc.value)
    assert str((tmp_path / rel).resolve()) in msg
    assert PUSHT_URL in msg
    assert "--data-dir" in msg
    assert isinstance(exc.value, FileNotFoundError)
    # env var is used when no override is given
    monkeypatch.setenv("DP_GYM_DATA_DIR", str(tmp_path / "env_dir"))
    with pytest.raises(DatasetNotFoundError, match=re.escape(str((tmp_path / "env_dir" / rel).resolve()))) as exc:
        dataset_path(rel)
    assert "$DP_GYM_DATA_DIR" in str(exc.value)
    # present but not the known dataset (empty) → refused; with the opt-out → returned
    (tmp_path / "pusht" / "pusht_cchi_v7_replay.zarr").mkdir(parents=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DatasetIntegrityError, match="819 file"):
        dataset_path(rel, tmp_path)
    monkeypatch.setenv(SKIP_ENV, "1")
    assert dataset_path(rel, tmp_path) == tmp_path / rel


# --- integrity: manifests, decode errors, non-finite values ---------------------------------

def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_known_dataset_verified_once_and_mismatch_names_the_file(data_dir, tmp_path, monkeypatch):
    import shutil

    from dp_gym.data import integrity

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(SKIP_ENV, raising=False)
    rel = "kitchen/kitchen_complete-v0.hdf5"
    copy = tmp_path / "data" / rel
    copy.parent.mkdir(parents=True)
    shutil.copy2(data_dir / rel, copy)
    assert integrity.verify_dataset(copy, integrity.MANIFESTS[rel]) is True  # hashed
    assert (tmp_path / "cache" / "dp_gym" / "verified_datasets.json").is_file()
    monkeypatch.setattr(integrity, "sha256_file", lambda p: pytest.fail("re-hashed a verified, unchanged dataset"))
    assert integrity.verify_dataset(copy, integrity.MANIFESTS[rel]) is False  # remembered
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _flip_byte(copy, 5000)  # size unchanged, mtime changed → hashed again
    with pytest.raises(DatasetIntegrityError, match=re.escape(str(copy.resolve())) + ".*does not match the SHA-256"):
        dataset_path(rel, tmp_path / "data")
    monkeypatch.setenv(SKIP_ENV, "1")  # deliberately modified data
    assert dataset_path(rel, tmp_path / "data") == copy


def test_flipped_bit_in_pusht_zarr_chunk_is_refused_naming_the_chunk(data_dir, tmp_path, monkeypatch):
    import shutil

    from dp_gym.tasks import get_task

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(SKIP_ENV, raising=False)
    rel = "pusht/pusht_cchi_v7_replay.zarr"
    shutil.copytree(data_dir / rel, tmp_path / rel)
    chunk = tmp_path / rel / "data" / "action" / "3.0"
    _flip_byte(chunk, chunk.stat().st_size // 2)
    with pytest.raises(DatasetIntegrityError, match=re.escape(str(chunk.resolve()))):
        get_task("pusht_keypoints").load_dataset(str(tmp_path))


def test_undecodable_zarr_chunk_error_names_the_chunk_file(tmp_path):
    path = tmp_path / "replay.zarr"
    _write_replay(path)
    chunk = path / "data" / "obs" / "1.0"
    chunk.write_bytes(b"not a blosc chunk" * 4)  # the codec cannot decode it
    with pytest.raises(IOError, match=re.escape(str(chunk)) + ": chunk cannot be decoded"):
        read_zarr_replay(path)


def test_non_finite_values_refused_in_every_episode_naming_key_and_frame(tmp_path):
    path = tmp_path / "replay.zarr"
    action, obs, ends = _write_replay(path)
    root = zarr.open_group(str(path), mode="a")
    obs[20, 3] = np.inf  # last episode (a validation episode for some splits)
    root["data/obs"][:] = obs
    with pytest.raises(ValueError, match=r"replay.zarr: array 'obs' holds NaN or inf at frame 20 \(episode 2\)"):
        read_zarr_replay(path)
    with pytest.raises(ValueError, match=r"array 'action' holds NaN or inf at frame 3 \(episode 0\)"):
        EpisodeData({"action": np.where(np.arange(10)[:, None] == 3, np.nan, 0.0)}, np.array([5, 10]))


# --- the real Push-T data -------------------------------------------------------------------

def test_real_pusht_dataset(data_dir):
    from dp_gym.tasks import get_task

    zpath = data_dir / "pusht" / "pusht_cchi_v7_replay.zarr"
    raw = read_zarr_replay(zpath, keys=["state", "action"])
    assert raw.n_episodes == 206
    assert raw.n_frames == 25650
    ep = get_task("pusht_keypoints").load_dataset(str(data_dir))
    assert ep.n_episodes == 206 and ep.n_frames == 25650
    obs = ep.arrays["obs"]
    assert obs.shape == (25650, 20) and obs.dtype == np.float32
    assert ep.arrays["action"].shape == (25650, 2)
    np.testing.assert_array_equal(obs[:, -2:], raw.arrays["state"][:, :2].astype(np.float32))
    np.testing.assert_array_equal(ep.episode_ends, raw.episode_ends)
    assert np.isfinite(obs).all()
    # a missing chunk would read as zeros: none of the 206 episodes may contain all-zero actions
    assert not np.any(np.all(ep.arrays["action"] == 0, axis=1))
