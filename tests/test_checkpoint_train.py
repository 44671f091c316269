"""Checkpoints (safetensors + JSON, no pickle) and the training loop end to end, including exact
resumption after an interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dp_gym.train as train_mod
from dp_gym import tasks as tasks_mod
from dp_gym.checkpoint import FORMAT_VERSION, META_KEY, CheckpointError, load_policy, load_tensors, save_policy
from dp_gym.data.replay import EpisodeData
from dp_gym.policies.diffusion.config import DiffusionConfig
from dp_gym.policies.diffusion.policy import DiffusionPolicy
from dp_gym.train import TrainConfig, train


# The toy runs are shorter than the default warm-up on purpose (the learning rate stays positive).
pytestmark = pytest.mark.filterwarnings("ignore:--steps .* is below --warmup-steps")


def tiny_policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = DiffusionConfig(obs_shapes={"obs": [3], "extra": [2]}, action_dim=2, horizon=8, n_obs_steps=2,
                          n_action_steps=4, down_dims=[16, 32], diffusion_step_embed_dim=16,
                          sampler="ddim", num_inference_steps=5)
    p = DiffusionPolicy(cfg)
    g = torch.Generator().manual_seed(0)
    p.fit_normalizers({"obs": torch.randn(50, 3, generator=g), "extra": torch.rand(50, 2, generator=g),
                       "action": torch.randn(50, 2, generator=g) * 5})
    return p.eval()


def obs_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(3, 2, 3, generator=g), "extra": torch.rand(3, 2, 2, generator=g)}


# --- save / load ----------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    p = tiny_policy()
    d = save_policy(p, tmp_path / "ckpt", extra={"note": "hello"})
    q, meta = load_policy(d)
    sd_p, sd_q = p.state_dict(), q.state_dict()
    assert sd_p.keys() == sd_q.keys()
    for k in sd_p:
        assert torch.equal(sd_p[k], sd_q[k]), k
    # normaliser statistics travel inside the weights
    assert "action_normalizer.scale" in sd_q
    assert meta["note"] == "hello" and meta["format_version"] == FORMAT_VERSION
    assert meta["policy_type"] == "diffusion"
    assert DiffusionConfig.from_dict(meta["policy_config"]) == p.config
    assert not q.training
    obs = obs_batch()
    a = p.predict_chunk(obs, generator=torch.Generator().manual_seed(5))
    b = q.predict_chunk(obs, generator=torch.Generator().manual_seed(5))
    assert a.shape == (3, 4, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the .safetensors file alone is self-describing
    r, _ = load_policy(d / "model.safetensors")
    torch.testing.assert_close(r.predict_chunk(obs, generator=torch.Generator().manual_seed(5)), a, rtol=0, atol=0)


def test_checkpoint_has_no_pickle(tmp_path):
    d = save_policy(tiny_policy(), tmp_path / "ckpt")
    assert sorted(x.name for x in d.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION and cfg["policy_config"]["down_dims"] == [16, 32]
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()[META_KEY]) == cfg
    # pickle files (torch.save) start with the zip / pickle magic; safetensors with a u64 header size
    head = (d / "model.safetensors").read_bytes()[:8]
    assert not head.startswith(b"PK") and head[:1] != b"\x80"
    header_len = int.from_bytes(head, "little")
    json.loads((d / "model.safetensors").read_bytes()[8 : 8 + header_len])


def _rewrite(file, mutate_meta=None, mutate_tensors=None):
    tensors = load_file(str(file))
    with safe_open(str(file), framework="pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
    if mutate_meta:
        mutate_meta(meta)
    if mutate_tensors:
        mutate_tensors(tensors)
    save_file(tensors, str(file), metadata={META_KEY: json.dumps(meta)})


def test_tampered_format_version_raises(tmp_path):
    d = save_policy(tiny_policy(), tmp_path / "ckpt")
    _rewrite(d / "model.safetensors", mutate_meta=lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="format_version"):
        load_policy(d)
    _rewrite(d / "model.safetensors", mutate_meta=lambda m: m.pop("format_version"))
    with pytest.raises(ValueError, match="format_version None"):
        load_policy(d)


def test_missing_tensor_or_file_raises(tmp_path):
    d = save_policy(tiny_policy(), tmp_path / "ckpt")
    _rewrite(d / "model.safetensors", mutate_tensors=lambda t: t.pop("action_normalizer.scale"))
    with pytest.raises(CheckpointError, match="action_normalizer.scale"):
        load_policy(d)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_policy(tmp_path / "nowhere")


@pytest.mark.parametrize("field, value, message", [
    ("horizon", 10**18, "horizon must be <= 65536"),
    ("horizon", 1e18, "horizon must be int"),
    ("action_dim", 10**12, "action_dim must be <= 65536"),
    ("down_dims", "wide", "down_dims must be list"),
    ("obs_shapes", {"obs": "3"}, "obs_shapes must be dict"),
    ("sampler", 3, "sampler must be str"),
    ("obs_noise_std", float("nan"), "obs_noise_std must be finite"),
    ("n_emb", 0, "n_emb must be >= 1"),
])
def test_invalid_embedded_config_is_refused_at_load(tmp_path, field, value, message):
    d = save_policy(tiny_policy(), tmp_path / "ckpt")
    _rewrite(d / "model.safetensors", mutate_meta=lambda m: m["policy_config"].update({field: value}))
    with pytest.raises(CheckpointError, match=message) as e:
        load_policy(d)
    assert str(d / "model.safetensors") in str(e.value)


def test_non_finite_weights_are_refused_at_load(tmp_path):
    d = save_policy(tiny_policy(), tmp_path / "ckpt")
    key = next(k for k in tiny_policy().state_dict() if "denoiser" in k and k.endswith("weight"))

    def poison(t):
        t[key] = t[key].clone()
        t[key].view(-1)[0] = float("nan")

    _rewrite(d / "model.safetensors", mutate_tensors=poison)
    with pytest.raises(CheckpointError, match="non-finite.*" + key.replace(".", r"\.")):
        load_policy(d)


def test_broken_checkpoint_metadata_is_refused(tmp_path):
    d = save_policy(tiny_policy(), tmp_path / "ckpt")
    _rewrite(d / "model.safetensors", mutate_meta=lambda m: m.update(policy_type="gan"))
    with pytest.raises(CheckpointError, match="unknown policy_type 'gan'"):
        load_policy(d)
    _rewrite(d / "model.safetensors", mutate_meta=lambda m: m.update(policy_type="diffusion", policy_config=[1]))
    with pytest.raises(CheckpointError, match="policy_config must be a JSON object"):
        load_policy(d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_policy(d)


# --- train() end to end ---------------------------------------------------------------------

def _toy_episodes(_data_dir=None) -> EpisodeData:
    rng = np.random.default_rng(0)
    n_ep, length = 10, 20
    obs = rng.normal(size=(n_ep * length, 3)).astype(np.float32)
    action = np.stack([np.tanh(obs[:, 0] + obs[:, 1]), obs[:, 2] * 0.5], axis=-1).astype(np.float32)
    return EpisodeData({"obs": obs, "action": action}, np.arange(1, n_ep + 1) * length)


@pytest.fixture
def toy_task(monkeypatch):
    task = tasks_mod.Task(name="toy", env_id="dp_gym/None-v0", env_kwargs={}, load_dataset=_toy_episodes,
                          obs_keys=("obs",), max_episode_steps=10)
    monkeypatch.setitem(tasks_mod.TASKS, "toy", task)
    return task


def _cfg(out, **kw) -> TrainConfig:
    base = dict(task="toy", steps=30, batch_size=16, model_size="small",
                policy_overrides={"down_dims": [16, 32], "diffusion_step_embed_dim": 16},
                checkpoint_every=10, val_every=10, log_every=10, out_dir=str(out))
    base.update(kw)
    return TrainConfig(**base)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_end_to_end(tmp_path, toy_task):
    out = tmp_path / "run"
    latest = train(_cfg(out))
    assert latest == out / "checkpoints" / "latest"
    policy, meta = load_policy(latest)
    assert meta["train_step"] == 30 and meta["task"] == "toy"
    assert meta["train_config"]["steps"] == 30
    assert policy.config.down_dims == [16, 32] and policy.config.obs_shapes == {"obs": [3]}
    # normalisers were fitted on the training data (not the defaults)
    assert not torch.equal(policy.action_normalizer.scale, torch.ones(2))
    chunk = policy.predict_chunk({"obs": torch.zeros(2, 2, 3)}, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (2, 8, 2) and torch.isfinite(chunk).all()
    rows = _rows(out)
    assert [r["step"] for r in rows] == [10, 20, 30]
    for r in rows:
        assert np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) and r["lr"] > 0
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,loss,val_loss") and len(csv_lines) == 4
    _, st_meta = load_tensors(out / "trainer_state.safetensors")
    assert st_meta["step"] == 30
    assert json.loads((out / "train_config.json").read_text())["task"] == "toy"


def test_resume_continues_from_saved_step(tmp_path, toy_task, capsys):
    out = tmp_path / "run"
    train(_cfg(out, steps=20))
    assert [r["step"] for r in _rows(out)] == [10, 20]
    # the wall time of the saved steps, and a row logged after the checkpoint by a run then killed
    rows = [{**r, "wall_s": 1000.0} if r["step"] == 20 else r for r in _rows(out)] + [{"step": 25, "wall_s": 5000.0}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    train(_cfg(out, steps=30, resume=True))
    assert "at step 20" in capsys.readouterr().out
    # a restart from scratch would have appended 10, 20, 30 again; the killed run's step-25 row is dropped
    assert [r["step"] for r in _rows(out)] == [10, 20, 30]
    # the wall clock counts on from the kept steps' 1000 s, not from zero nor from the dropped row
    assert 1000.0 < _rows(out)[-1]["wall_s"] < 1100.0
    _, meta = load_tensors(out / "trainer_state.safetensors")
    assert meta["step"] == 30
    assert load_policy(out / "checkpoints" / "latest")[1]["train_step"] == 30


class _Killed(Exception):
    pass


def _state(out):
    tensors, meta = load_tensors(out / "trainer_state.safetensors")
    return tensors, meta


TRANSFORMER = dict(denoiser="transformer", policy_overrides={"n_layer": 1, "n_head": 2, "n_emb": 16})


@pytest.mark.parametrize("variant", [{}, TRANSFORMER], ids=["unet", "transformer"])
def test_resume_is_exact(tmp_path, toy_task, monkeypatch, variant):
    """Interrupting at step 20 (right after the checkpoint) and resuming gives bit-identical weights,
    EMA, optimiser state and metrics to an uninterrupted run with the same config (the transformer
    also covers several optimiser parameter groups and attention dropout's RNG)."""
    full = tmp_path / "full"
    train(_cfg(full, **variant))

    real_save = train_mod.atomic_save_tensors

    def save_then_die(path, tensors, meta=None):
        real_save(path, tensors, meta)
        if meta and meta.get("step") == 20:
            raise _Killed

    part = tmp_path / "part"
    monkeypatch.setattr(train_mod, "atomic_save_tensors", save_then_die)
    with pytest.raises(_Killed):
        train(_cfg(part, **variant))
    monkeypatch.setattr(train_mod, "atomic_save_tensors", real_save)
    assert _state(part)[1]["step"] == 20
    train(_cfg(part, resume=True, **variant))

    (a, meta_a), (b, meta_b) = _state(full), _state(part)
    assert meta_a["step"] == meta_b["step"] == 30
    assert a.keys() == b.keys()
    assert any(k.startswith("optim.") for k in a) and any(k.startswith("ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert meta_a["optimizer"] == meta_b["optimizer"] and meta_a["lr_scheduler"] == meta_b["lr_scheduler"]
    pa = load_file(str(full / "checkpoints" / "latest" / "model.safetensors"))
    pb = load_file(str(part / "checkpoints" / "latest" / "model.safetensors"))
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    ra, rb = _rows(full), _rows(part)
    assert [r["step"] for r in rb] == [10, 20, 30]
    for x, y in zip(ra, rb):
        assert x["loss"] == y["loss"] and x["val_loss"] == y["val_loss"] and x["lr"] == y["lr"]


@pytest.mark.parametrize("field", ["checkpoint_every", "log_every", "eval_episodes"])
def test_zero_intervals_are_refused_up_front(field):
    with pytest.raises(ValueError, match=f"{field} must be >= 1, got 0"):
        TrainConfig(**{field: 0})


def test_second_trainer_on_the_same_out_dir_is_refused(tmp_path, toy_task):
    out = tmp_path / "run"
    out.mkdir()
    with train_mod.RunDirLock(out):  # another trainer holds the folder
        with pytest.raises(RuntimeError, match="in use by another trainer"):
            train(_cfg(out, steps=10))
        assert not (out / "metrics.jsonl").exists()
    train(_cfg(out, steps=10))  # released: the folder can be trained into again
    assert (out / "checkpoints" / "latest" / "model.safetensors").exists()
    # the same between processes: a trainer in another process holds the folder
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dp_gym.train import RunDirLock; "
                               f"lock = RunDirLock({str(out)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="in use by another trainer"):
            train(_cfg(out, steps=20, resume=True))
    finally:
        holder.kill()
        holder.wait()
    train(_cfg(out, steps=20, resume=True))  # the killed holder's lock is gone with it


def test_stale_temporary_files_are_removed_at_start(tmp_path, toy_task):
    out = tmp_path / "run"
    train(_cfg(out, steps=10))
    stale = [out / ".trainer_state.safetensors.k1ll3d.tmp", out / "checkpoints" / "latest" / ".model.safetensors.abc.tmp",
             out / ".eval.mp4.x9.tmp.mp4"]  # a keep_suffix temporary (videos)
    for f in stale:
        f.write_bytes(b"\0" * 1000)
    keep = out / "notes.tmp"  # not an atomic-write temporary
    keep.write_text("mine")
    train(_cfg(out, steps=20, resume=True))
    assert not any(f.exists() for f in stale) and keep.exists()


def test_resume_refuses_fewer_steps_and_changed_options(tmp_path, toy_task):
    out = tmp_path / "run"
    train(_cfg(out, steps=20))
    saved = (out / "train_config.json").read_text()
    with pytest.raises(ValueError, match="--steps 10 is below the saved run's step 20"):
        train(_cfg(out, steps=10, resume=True))
    with pytest.raises(ValueError, match=r"--lr: saved 0.0001, now 0.001.*--seed: saved 42, now 1"):
        train(_cfg(out, steps=30, resume=True, lr=1e-3, seed=1))
    assert (out / "train_config.json").read_text() == saved
    assert [r["step"] for r in _rows(out)] == [10, 20]
    train(_cfg(out, steps=30, resume=True, log_every=5, num_threads=1))  # harmless changes are fine


def test_resume_trims_metrics_logged_after_the_last_checkpoint(tmp_path, toy_task, monkeypatch):
    out = tmp_path / "run"
    real = train_mod.cosine_with_warmup

    def die_at_26(step, warmup, total):
        if step == 26:
            raise _Killed
        return real(step, warmup, total)

    monkeypatch.setattr(train_mod, "cosine_with_warmup", die_at_26)
    with pytest.raises(_Killed):
        train(_cfg(out, log_every=5))
    assert [r["step"] for r in _rows(out)] == [5, 10, 15, 20, 25]  # checkpoint at 20, rows up to 25
    monkeypatch.setattr(train_mod, "cosine_with_warmup", real)
    train(_cfg(out, log_every=5, resume=True))
    assert [r["step"] for r in _rows(out)] == [5, 10, 15, 20, 25, 30]
    csv_steps = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_steps == ["5", "10", "15", "20", "25", "30"]


def test_steps_below_warmup_warns(tmp_path, toy_task):
    with pytest.warns(UserWarning, match="--steps 10 is below --warmup-steps 500"):
        train(_cfg(tmp_path / "run", steps=10, warmup_steps=500))


def test_refused_run_leaves_no_output_folder(tmp_path, toy_task):
    with pytest.raises(ValueError, match="unknown model size"):
        train(_cfg(tmp_path / "x", model_size="huge"))
    assert not (tmp_path / "x").exists()


def test_train_config_validation(tmp_path, toy_task):
    with pytest.raises(ValueError, match="steps and batch_size"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown model size"):
        train(_cfg(tmp_path / "x", model_size="huge"))
    with pytest.raises(ValueError, match="unknown task"):
        train(_cfg(tmp_path / "y", task="no_such_task"))


def _scaled_toy_episodes(scale: float, obs_dim: int = 3):
    def load(_data_dir=None) -> EpisodeData:
        ep = _toy_episodes()
        obs = np.concatenate([ep.arrays["obs"]] + [ep.arrays["obs"][:, :1]] * (obs_dim - 3), axis=1)
        return EpisodeData({"obs": obs, "action": ep.arrays["action"] * scale}, ep.episode_ends)
    return load


def test_init_from_fine_tunes_a_checkpoint_on_new_data(tmp_path, toy_task, monkeypatch, capsys):
    """--init-from starts from the checkpoint's weights and keeps its normalisers (a refit on the
    new data would change them); the optimiser and schedule start afresh."""
    src = train(_cfg(tmp_path / "src", steps=20))
    src_sd = load_tensors(src / "model.safetensors")[0]
    for name, scale, dim in (("toy3x", 3.0, 3), ("toy_wide", 1.0, 4)):
        monkeypatch.setitem(tasks_mod.TASKS, name, tasks_mod.Task(
            name=name, env_id="dp_gym/None-v0", env_kwargs={}, load_dataset=_scaled_toy_episodes(scale, dim),
            obs_keys=("obs",), max_episode_steps=10))
    # lr 0: nothing moves, so the fine-tuned checkpoint must be the source checkpoint exactly
    frozen = train(_cfg(tmp_path / "frozen", task="toy3x", steps=10, lr=0.0, policy_overrides={}, init_from=str(src)))
    frozen_sd = load_tensors(frozen / "model.safetensors")[0]
    assert frozen_sd.keys() == src_sd.keys()
    for k in src_sd:
        torch.testing.assert_close(frozen_sd[k], src_sd[k], rtol=0, atol=0, msg=k)
    # with learning the weights move, from the source's config (not --model-size small's widths)
    tuned = train(_cfg(tmp_path / "tuned", task="toy3x", steps=20, policy_overrides={}, init_from=str(src)))
    policy, meta = load_policy(tuned)
    assert policy.config.down_dims == [16, 32] and meta["train_config"]["init_from"] == str(src)
    tuned_sd = load_tensors(tuned / "model.safetensors")[0]
    torch.testing.assert_close(tuned_sd["action_normalizer.scale"], src_sd["action_normalizer.scale"], rtol=0, atol=0)
    assert any(not torch.equal(tuned_sd[k], src_sd[k]) for k in src_sd if "normalizer" not in k)
    assert [r["step"] for r in _rows(tmp_path / "tuned")] == [10, 20]
    # a scratch run on the same data fits its own normalisers
    scratch_sd = load_tensors(train(_cfg(tmp_path / "scratch", task="toy3x", steps=10)) / "model.safetensors")[0]
    assert not torch.equal(scratch_sd["action_normalizer.scale"], src_sd["action_normalizer.scale"])
    with pytest.raises(ValueError, match=r"expects observations \{'obs': \[3\]\}.*has \{'obs': \[4\]\}"):
        train(_cfg(tmp_path / "wide", task="toy_wide", policy_overrides={}, init_from=str(src)))
    with pytest.raises(ValueError, match="holds a 'diffusion' policy, not --policy 'bc'"):
        train(_cfg(tmp_path / "bc", task="toy3x", policy="bc", policy_overrides={}, init_from=str(src)))
    with pytest.raises(ValueError, match="--policy-overrides cannot be combined with --init-from"):
        train(_cfg(tmp_path / "ov", task="toy3x", init_from=str(src)))
    with pytest.raises(FileNotFoundError):
        train(_cfg(tmp_path / "none", task="toy3x", policy_overrides={}, init_from=str(tmp_path / "nowhere")))


def test_mixed_precision_bf16_trains_and_fp16_needs_cuda(tmp_path, toy_task):
    out = tmp_path / "bf16"
    train(_cfg(out, steps=10, mixed_precision="bf16"))
    rows = _rows(out)
    assert rows[-1]["step"] == 10 and np.isfinite(rows[-1]["loss"])
    policy, _ = load_policy(out / "checkpoints" / "latest")
    assert all(p.dtype == torch.float32 for p in policy.parameters())  # autocast only, weights stay fp32
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16.*CUDA"):
            TrainConfig(mixed_precision="fp16")


def _run_torchrun(tmp_path, nproc: int, out: str) -> None:
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "dp_gym.train",
           "--task", "toy_bimodal", "--steps", "60", "--batch-size", "32", "--lr", "1e-3", "--warmup-steps", "5",
           "--policy-overrides", '{"down_dims": [16, 32], "diffusion_step_embed_dim": 16}', "--log-every", "20",
           "--val-every", "0", "--checkpoint-every", "30", "--num-threads", "1", "--out-dir", str(tmp_path / out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_ddp_training_matches_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo): one loadable checkpoint, both processes' RNG states in
    the trainer state, and a loss curve like the single-process run at the same global batch."""
    _run_torchrun(tmp_path, 2, "ddp")
    _run_torchrun(tmp_path, 1, "single")
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    policy, meta = load_policy(ddp / "checkpoints" / "latest")
    assert meta["train_step"] == 60
    assert policy.predict_chunk({"obs": torch.zeros(1, 2, 2)}, generator=torch.Generator().manual_seed(0)).shape == (1, 8, 1)
    st, st_meta = load_tensors(ddp / "trainer_state.safetensors")
    assert st_meta["world_size"] == 2 and "rng.sampler.rank1" in st and "rng.sampler" in st
    assert not torch.equal(st["rng.sampler"], st["rng.sampler.rank1"])  # each process sampled its own windows
    assert json.loads((ddp / "train_config.json").read_text())["world_size"] == 2
    curves = [[r["loss"] for r in _rows(d)] for d in (ddp, single)]
    assert [len(c) for c in curves] == [3, 3]  # process 0 alone wrote the metrics
    for c in curves:
        assert c[-1] < 0.7 * c[0]
    assert abs(np.log(curves[0][-1] / curves[1][-1])) < np.log(2.0)
