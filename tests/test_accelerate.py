"""Accelerated sampling (compiled / CUDA-graph / autocast denoising loop) gives the eager actions
for the same noise, and falls back to eager where a mode is unavailable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dp_gym.agent import DiffusionAgent
from dp_gym.policies.diffusion.accelerate import SamplingAccelerator
from dp_gym.policies.diffusion.config import DiffusionConfig
from dp_gym.policies.diffusion.policy import DiffusionPolicy


def small_policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    p = DiffusionPolicy(DiffusionConfig(obs_shapes={"obs": [4]}, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4,
                                        down_dims=[16, 32], diffusion_step_embed_dim=16, num_inference_steps=10))
    g = torch.Generator().manual_seed(1)
    p.fit_normalizers({"obs": torch.randn(64, 4, generator=g), "action": torch.rand(64, 2, generator=g) * 100})
    return p.eval()


def _inputs(p, sampler, steps, b=3):
    g = torch.Generator().manual_seed(2)
    obs = {"obs": torch.randn(b, 2, 4, generator=g)}
    noise = torch.randn(b, *p.noise_shape(steps, sampler), generator=g)
    return obs, noise


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 20)])
def test_eager_accelerator_is_bit_identical(sampler, steps):
    p = small_policy()
    obs, noise = _inputs(p, sampler, steps)
    ref = p.sample_actions(obs, noise=noise, sampler=sampler, num_inference_steps=steps)
    acc = SamplingAccelerator(p, "eager", sampler=sampler, num_inference_steps=steps)
    assert torch.equal(p.sample_actions(obs, noise=noise, sampler=sampler, num_inference_steps=steps, accelerator=acc), ref)


def test_cuda_graph_falls_back_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the fallback path is for CPU-only machines")
    p = small_policy()
    obs, noise = _inputs(p, "ddim", 10)
    with pytest.warns(RuntimeWarning, match="falls back to eager"):
        acc = SamplingAccelerator(p, "cuda_graph", sampler="ddim", num_inference_steps=10)
    assert acc.active_mode == "eager" and "CUDA" in acc.fallback_reason
    ref = p.sample_actions(obs, noise=noise, sampler="ddim", num_inference_steps=10)
    assert torch.equal(p.sample_actions(obs, noise=noise, sampler="ddim", num_inference_steps=10, accelerator=acc), ref)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    p = small_policy()
    obs, noise = _inputs(p, "ddim", 10)
    ref = p.sample_actions(obs, noise=noise, sampler="ddim", num_inference_steps=10)

    def broken_compile(*a, **k):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    acc = SamplingAccelerator(p, "compile", sampler="ddim", num_inference_steps=10)
    assert acc.active_mode == "compile"
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        out = p.sample_actions(obs, noise=noise, sampler="ddim", num_inference_steps=10, accelerator=acc)
    assert acc.active_mode == "eager" and torch.equal(out, ref)

    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("dynamo unsupported")))
    with pytest.warns(RuntimeWarning, match="dynamo unsupported"):
        acc = SamplingAccelerator(p, "compile", sampler="ddim", num_inference_steps=10)
    assert acc.active_mode == "eager"


@pytest.mark.slow  # TorchDynamo tracing of the unrolled loop: ~30 s on an idle core
def test_compiled_loop_matches_eager():
    p = small_policy()
    obs, noise = _inputs(p, "ddim", 4)
    ref = p.sample_actions(obs, noise=noise, sampler="ddim", num_inference_steps=4)
    # The "eager" backend runs the TorchDynamo-captured graph without code generation, so this
    # checks the capture itself quickly; the perf harness times inductor.
    acc = SamplingAccelerator(p, "compile", sampler="ddim", num_inference_steps=4, compile_kwargs={"backend": "eager"})
    out = p.sample_actions(obs, noise=noise, sampler="ddim", num_inference_steps=4, accelerator=acc)
    assert acc.active_mode == "compile"
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)


def test_bf16_autocast_close_to_float32():
    p = small_policy()
    obs, noise = _inputs(p, "ddim", 10)
    ref = p.sample_actions(obs, noise=noise, sampler="ddim", num_inference_steps=10)
    acc = SamplingAccelerator(p, "eager", autocast="bf16", sampler="ddim", num_inference_steps=10)
    out = p.sample_actions(obs, noise=noise, sampler="ddim", num_inference_steps=10, accelerator=acc)
    assert out.dtype == torch.float32
    # bf16 keeps ~3 significant digits; over 10 steps of an untrained net the worst action differs
    # by 2.7% of the action range here (measured), so allow 5%.
    err = ((out - ref).abs() / (p.action_normalizer.data_max - p.action_normalizer.data_min)).max()
    assert 0 < err < 0.05


def test_agent_accelerate_uses_sample_kwargs_and_checks_them(monkeypatch):
    monkeypatch.setenv("DP_GYM_ACCELERATE", "eager")  # agent2's default path is the plain loop
    p = small_policy()
    agent = DiffusionAgent(p)
    agent.sample_kwargs = {"sampler": "ddim", "num_inference_steps": 5}
    acc = agent.accelerate("eager")
    assert p.accelerator is acc and acc.matches("ddim", 5)
    obs = np.zeros((2, 4), np.float32)
    a, _ = agent.predict(obs, episode_start=np.ones(2, bool), deterministic=True)
    p.accelerator = None
    agent2 = DiffusionAgent(p)
    agent2.sample_kwargs = dict(agent.sample_kwargs)
    b, _ = agent2.predict(obs, episode_start=np.ones(2, bool), deterministic=True)
    np.testing.assert_array_equal(a, b)
    p.accelerator = acc
    agent.sample_kwargs = {"sampler": "ddpm", "num_inference_steps": 5}
    with pytest.raises(ValueError, match="accelerator was built for ddim-5"):
        agent.predict(obs, episode_start=np.ones(2, bool))


def test_perf_harness_writes_json_and_table(tmp_path):
    import json

    from dp_gym.perf import PerfConfig, run

    cfg = PerfConfig(kinds="lowdim", sizes="small", samplers="ddim:2", modes="eager,cuda_graph", repeats=1, warmup=0,
                     n_envs=2, skip="train,env", out_dir=str(tmp_path))
    res = run(cfg, command="test")
    rows = res["predict"]
    if not torch.cuda.is_available():  # the fallback is recorded, not hidden
        assert all(r["active_mode"] == "eager" and "CUDA" in r["fallback_reason"] for r in rows if r["mode"] == "cuda_graph")
    assert {(r["batch"], r["mode"]) for r in rows} == {(1, "eager"), (2, "eager"), (1, "cuda_graph"), (2, "cuda_graph")}
    assert all(r["ms_per_chunk"] > 0 and r["max_abs_diff_vs_eager_fp32"] == 0.0 for r in rows)
    assert json.loads((tmp_path / "perf.json").read_text())["machine"]["torch"] == torch.__version__
    assert "| lowdim | small | ddim-2 | 1 | eager | no | eager |" in (tmp_path / "perf.md").read_text()


def test_perf_harness_compares_every_variant_with_eager(tmp_path):
    from dp_gym.perf import PerfConfig, run

    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    cfg = PerfConfig(kinds="lowdim", sizes="small", samplers="ddim:2", modes="per_step,eager,onnx,openvino", repeats=2, warmup=0,
                     n_envs=2, train_batch=4, train_steps=2, env_steps=3, out_dir=str(tmp_path))
    res = run(cfg, command="test")
    rows = {(r["batch"], r["mode"]): r for r in res["predict"]}
    assert set(rows) == {(b, m) for b in (1, 2) for m in ("per_step", "eager", "onnx", "openvino")}
    for (b, mode), r in rows.items():
        assert r["active_mode"] == mode and r["ms_per_chunk"] > 0 and r["first_call_ms"] > 0
        assert r["speedup_vs_eager"] == pytest.approx(rows[(b, "eager")]["ms_per_chunk"] / r["ms_per_chunk"])
        assert r["max_abs_diff_vs_eager_fp32"] < 2e-3 and (mode != "eager" or r["max_abs_diff_vs_eager_fp32"] == 0)
    train = {r["variant"]: r for r in res["train"]}
    assert set(train) == {"plain", "fast"} and train["plain"]["speedup_vs_plain"] == 1.0
    assert train["fast"]["max_loss_diff_vs_plain"] < 1e-4
    assert [r["env"] for r in res["env"]] == ["PushT keypoints", "PushT pixels_agent_pos"]
    assert all(r["env_steps_per_s"] > 0 and r["env_steps_per_s_previous"] > 0 for r in res["env"])
    md = (tmp_path / "perf.md").read_text()
    assert "| lowdim | small | ddim-2 | 1 | onnx | no | onnx |" in md and "| fast |" in md and "| PushT keypoints | 2 |" in md
