"""The CPU sampling paths (denoiser trunk exported to ONNX and run by OpenVINO, the default, or by
ONNX Runtime; conditioning precomputed for all steps) give the eager path's actions for the same
noise, cache their export, and fall back (OpenVINO → ONNX Runtime → eager) with the reason
reported when they cannot run."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dp_gym.agent import DiffusionAgent
from dp_gym.policies.diffusion import accelerate as accel
from dp_gym.policies.diffusion.accelerate import OnnxTrunk, SamplingAccelerator, default_mode
from dp_gym.policies.diffusion.config import DiffusionConfig
from dp_gym.policies.diffusion.policy import DiffusionPolicy
from dp_gym.policies.diffusion.winograd import toom_cook

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
TOL = 1e-3  # of the action range


def make_policy(**kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = dict(obs_shapes={"obs": [5]}, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4, down_dims=[16, 32],
               diffusion_step_embed_dim=16, num_inference_steps=10, sampler="ddim")
    cfg.update(kw)
    p = DiffusionPolicy(DiffusionConfig(**cfg))
    g = torch.Generator().manual_seed(1)
    fit = {k: torch.rand(64, s[0], generator=g) * 500 for k, s in p.config.obs_shapes.items() if len(s) == 1}
    fit["action"] = torch.rand(64, 2, generator=g) * 500
    p.fit_normalizers(fit)
    return p.eval()


def make_obs(p: DiffusionPolicy, b: int, seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = p.config
    return {k: (torch.randint(0, 256, (b, c.n_obs_steps, *s), generator=g, dtype=torch.uint8) if len(s) == 3
                else torch.rand(b, c.n_obs_steps, *s, generator=g) * 500) for k, s in c.obs_shapes.items()}


def rel_err(p: DiffusionPolicy, a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / (p.action_normalizer.data_max - p.action_normalizer.data_min)).max())


def per_step_reference(p: DiffusionPolicy, obs, noise, sampler: str, steps: int) -> torch.Tensor:
    with torch.no_grad():
        x = accel.per_step_loop(p.denoiser, p.scheduler, sampler, steps, p.encode_obs(obs), noise)
    return p.action_normalizer.unnormalize(x)


CASES = {
    "unet": {},
    "unet_sample_prediction": {"prediction_type": "sample"},
    "transformer": {"denoiser": "transformer", "n_layer": 2, "n_head": 2, "n_emb": 16, "horizon": 10},
    "image": {"obs_shapes": {"cam": [40, 40, 3], "agent_pos": [2]}, "crop_shape": [36, 36], "image_feature_dim": 8,
              "spatial_softmax_keypoints": 4},
}


@pytest.mark.parametrize("mode", ["openvino", "onnx"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 20)])
@pytest.mark.parametrize("batch", [1, 5])  # 5: the UNet trunk in its Winograd form
def test_runtimes_match_eager_for_the_same_noise(mode, case, sampler, steps, batch):
    p = make_policy(**CASES[case])
    obs = make_obs(p, batch)
    noise = torch.randn(batch, *p.noise_shape(steps, sampler), generator=torch.Generator().manual_seed(3))
    ref = per_step_reference(p, obs, noise, sampler, steps)
    eager = p.sample_actions(obs, noise=noise, sampler=sampler, num_inference_steps=steps)
    acc = SamplingAccelerator(p, mode, sampler=sampler, num_inference_steps=steps)
    out = p.sample_actions(obs, noise=noise, sampler=sampler, num_inference_steps=steps, accelerator=acc)
    assert acc.active_mode == mode and acc.fallback_reason is None and acc.onnx_trunk is not None
    assert acc.onnx_trunk.runtime == accel.RUNTIMES[mode]
    assert acc.onnx_trunk.winograd == (mode == "openvino" and batch >= accel.WINOGRAD_MIN_BATCH and case != "transformer")
    assert sorted(acc.onnx_cameras) == sorted(p.config.image_keys)  # image encoders run in the runtime too
    assert rel_err(p, eager, ref) < 1e-5  # precomputing the conditioning changes only rounding
    assert rel_err(p, out, ref) < TOL
    assert not torch.equal(out, p.sample_actions(obs, noise=noise + 1, sampler=sampler, num_inference_steps=steps, accelerator=acc))


def test_agent_default_is_openvino_on_cpu_and_env_var_forces_eager(monkeypatch):
    monkeypatch.delenv("DP_GYM_ACCELERATE", raising=False)
    assert default_mode("cpu") == "openvino" and default_mode("cuda") == "eager"
    p = make_policy()
    obs = np.random.default_rng(0).uniform(0, 500, size=(4, 5)).astype(np.float32)
    fast = DiffusionAgent(p)
    a, _ = fast.predict(obs, episode_start=np.ones(4, bool), deterministic=True)
    assert fast.accelerator.active_mode == "openvino"
    monkeypatch.setenv("DP_GYM_ACCELERATE", "eager")
    plain = DiffusionAgent(p)
    b, _ = plain.predict(obs, episode_start=np.ones(4, bool), deterministic=True)
    assert plain.accelerator.active_mode == "eager"
    assert np.abs(a - b).max() / 500 < TOL and not np.array_equal(a, np.zeros_like(a))
    plain.accelerate("openvino")  # an explicit mode wins over the default
    c, _ = plain.predict(obs, episode_start=np.ones(4, bool), deterministic=True)
    assert plain.accelerator.active_mode == "openvino"
    np.testing.assert_array_equal(a, c)
    p.accelerator = None
    monkeypatch.setenv("DP_GYM_ACCELERATE", "fast")
    with pytest.raises(ValueError, match="DP_GYM_ACCELERATE must be one of"):
        DiffusionAgent(p).predict(obs)


def test_export_is_cached_on_disk_and_keyed_by_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_GYM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(OnnxTrunk, "_models", type(OnnxTrunk._models)())  # no in-process copies
    p = make_policy()
    c_shape = (p.denoiser.condition(torch.zeros(1, dtype=torch.long), torch.zeros(1, 2, 5)).shape[1],)
    first = OnnxTrunk(p.denoiser, (8, 2), c_shape)
    assert first.exported and first.path.parent == tmp_path / "onnx" and first.path.is_file()
    OnnxTrunk._models.clear()
    second = OnnxTrunk(p.denoiser, (8, 2), c_shape)
    assert not second.exported and second.key == first.key  # loaded from the file
    with torch.no_grad():
        p.denoiser.final[1].bias.add_(1.0)
    third = OnnxTrunk(p.denoiser, (8, 2), c_shape)
    assert third.exported and third.key != first.key
    assert sorted(f.name for f in (tmp_path / "onnx").iterdir()) == sorted([first.path.name, third.path.name])
    OnnxTrunk._models.clear()
    third.path.write_bytes(b"not a model")  # a damaged entry is replaced, not fatal
    with pytest.warns(RuntimeWarning, match="unreadable cached model"):
        fourth = OnnxTrunk(p.denoiser, (8, 2), c_shape)
    assert fourth.exported and third.path.read_bytes() != b"not a model"


def test_missing_runtime_falls_back_to_eager_with_reason(monkeypatch):
    p = make_policy()
    obs = make_obs(p, 2)
    noise = torch.randn(2, *p.noise_shape())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.warns(RuntimeWarning, match="falls back to eager: onnxruntime is not installed"):
        acc = SamplingAccelerator(p, "onnx", sampler="ddim", num_inference_steps=10)
    assert acc.active_mode == "eager" and "onnxruntime" in acc.fallback_reason
    assert torch.equal(p.sample_actions(obs, noise=noise, accelerator=acc), p.sample_actions(obs, noise=noise))


def test_missing_or_failing_openvino_falls_back_to_onnx_runtime(monkeypatch):
    p = make_policy()
    obs = make_obs(p, 2)
    noise = torch.randn(2, *p.noise_shape())
    ort = p.sample_actions(obs, noise=noise, accelerator=SamplingAccelerator(p, "onnx", sampler="ddim", num_inference_steps=10))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "openvino", None)  # import fails
        with pytest.warns(RuntimeWarning, match="'openvino' falls back to onnx: openvino is not installed"):
            acc = SamplingAccelerator(p, "openvino", sampler="ddim", num_inference_steps=10)
        assert acc.active_mode == "onnx"
        assert torch.equal(p.sample_actions(obs, noise=noise, accelerator=acc), ort)
        m.setitem(sys.modules, "onnxruntime", None)  # neither runtime: eager
        with pytest.warns(RuntimeWarning, match="'openvino' falls back to eager: openvino is not installed"):
            acc = SamplingAccelerator(p, "openvino", sampler="ddim", num_inference_steps=10)
        assert acc.active_mode == "eager"

    def broken(*a, **k):
        raise RuntimeError("CPU plugin cannot compile node foo")

    monkeypatch.setattr(accel._OpenVinoSession, "__init__", broken)
    monkeypatch.setattr(accel.OnnxModel, "_sessions", type(accel.OnnxModel._sessions)())
    acc = SamplingAccelerator(p, "openvino", sampler="ddim", num_inference_steps=10)
    with pytest.warns(RuntimeWarning, match=r"falls back to onnx: ONNX export or run failed \(openvino\).*node foo"):
        out = p.sample_actions(obs, noise=noise, accelerator=acc)
    assert acc.active_mode == "onnx" and acc.onnx_trunk.runtime == "onnxruntime"
    assert torch.equal(out, ort)


def test_failed_export_falls_back_to_eager_with_reason(tmp_path, monkeypatch):
    p = make_policy()
    obs = make_obs(p, 2)
    noise = torch.randn(2, *p.noise_shape())
    monkeypatch.setenv("DP_GYM_CACHE_DIR", str(tmp_path))  # nothing cached: the export must run
    monkeypatch.setattr(OnnxTrunk, "_models", type(OnnxTrunk._models)())

    def broken(*a, **k):
        raise RuntimeError("unsupported operator aten::foo")

    monkeypatch.setattr(OnnxTrunk, "export", staticmethod(broken))
    acc = SamplingAccelerator(p, "onnx", sampler="ddim", num_inference_steps=10)
    with pytest.warns(RuntimeWarning, match="unsupported operator"):
        out = p.sample_actions(obs, noise=noise, accelerator=acc)
    assert acc.active_mode == "eager" and "ONNX export or run failed" in acc.fallback_reason
    assert torch.equal(out, p.sample_actions(obs, noise=noise))


def test_runtime_modes_reject_precisions_they_cannot_run():
    with pytest.raises(ValueError, match="autocast must be 'no', got 'bf16'"):
        SamplingAccelerator(make_policy(), "onnx", autocast="bf16")
    with pytest.raises(ValueError, match="autocast must be 'no' or 'bf16', got 'fp16'"):
        SamplingAccelerator(make_policy(), "openvino", autocast="fp16")
    with pytest.raises(ValueError, match="onnxruntime runs in precision f32, got 'bf16'"):
        OnnxTrunk(make_policy().denoiser, (8, 2), (1,), runtime="onnxruntime", precision="bf16")


@pytest.mark.parametrize("case", ["unet", "image"])
def test_openvino_bf16_runs_in_bfloat16_near_the_float32_actions(case):
    """autocast="bf16" asks OpenVINO for bfloat16 inference (trunk and cameras): on a CPU with bf16
    units the actions move, but stay near the float32 ones; elsewhere the plugin runs float32 and
    the session says so."""
    p = make_policy(**CASES[case])
    obs = make_obs(p, 5)
    noise = torch.randn(5, *p.noise_shape(), generator=torch.Generator().manual_seed(3))
    f32 = p.sample_actions(obs, noise=noise, accelerator=SamplingAccelerator(p, "openvino", sampler="ddim", num_inference_steps=10))
    acc = SamplingAccelerator(p, "openvino", autocast="bf16", sampler="ddim", num_inference_steps=10)
    out = p.sample_actions(obs, noise=noise, accelerator=acc)
    assert acc.active_mode == "openvino" and acc.runtime_precision == "bf16" and acc.fallback_reason is None
    assert not acc.onnx_trunk.winograd  # bfloat16 runs the plain form at every batch size
    assert acc.onnx_trunk.precision == "bf16" and all(m.precision == "bf16" for m in acc.onnx_cameras.values())
    sessions = [s for (key, *_, precision), (s, _) in accel.OnnxModel._sessions.items() if key == acc.onnx_trunk.key and precision == "bf16"]
    assert len(sessions) == 1
    if sessions[0].precision == "bf16":  # the plugin runs bfloat16 on this CPU
        assert not torch.equal(out, f32) and rel_err(p, out, f32) < 0.05
    else:
        assert sessions[0].precision == "f32" and rel_err(p, out, f32) < TOL


def test_openvino_bf16_falling_back_to_onnx_runtime_says_it_runs_float32(monkeypatch):
    p = make_policy()
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.warns(RuntimeWarning, match=r"falls back to onnx: openvino is not installed.*\(ONNX Runtime runs float32, not bf16\)$"):
        acc = SamplingAccelerator(p, "openvino", autocast="bf16", sampler="ddim", num_inference_steps=10)
    assert acc.active_mode == "onnx" and acc.runtime_precision == "f32"
    obs = make_obs(p, 2)
    noise = torch.randn(2, *p.noise_shape())
    assert rel_err(p, p.sample_actions(obs, noise=noise, accelerator=acc), p.sample_actions(obs, noise=noise)) < TOL


@pytest.mark.parametrize("kernel_size,down_dims,horizon", [(5, [16, 32], 8), (3, [8, 16, 32], 16), (5, [16], 6)])
def test_export_form_computes_the_same_function(kernel_size, down_dims, horizon):
    """The time-major UNet (convolutions as gather + GEMM, strided and transposed ones included)
    is the same function as the module's own trunk."""
    p = make_policy(kernel_size=kernel_size, down_dims=down_dims, horizon=horizon)
    x, cond = torch.randn(3, horizon, 2), torch.randn(3, 2, 5)
    for winograd in (False, True):
        form = accel._export_form(p.denoiser, (horizon, 2), winograd=winograd)
        with torch.no_grad():
            c = p.denoiser.condition(torch.tensor([0, 50, 99]), cond)
            torch.testing.assert_close(form.denoise(x, c), p.denoiser.denoise(x, c), atol=1e-5, rtol=1e-5)
        assert not any(isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.GroupNorm)) for m in form.modules())
        # with winograd, every conv block's convolution (residual blocks and the final block)
        n_winograd = sum(isinstance(m, accel._WinogradConv) for m in form.modules())
        n_blocks = sum(isinstance(m, accel._TimeMajorConvBlock) for m in form.modules())
        assert n_winograd == (n_blocks if winograd else 0) and n_blocks > 0


def test_winograd_form_starts_earlier_for_a_large_unet(monkeypatch):
    """From WINOGRAD_MIN_BATCH samples; from WINOGRAD_MIN_BATCH_LARGE for a UNet whose weights
    exceed ONNX_DYNAMIC_BATCH_BYTES (the paper UNet, whose trunk gains from 3 samples)."""
    p = make_policy(**CASES["unet"])
    acc = SamplingAccelerator(p, "openvino", sampler="ddim", num_inference_steps=10)
    small = [b for b in range(1, 8) if acc.winograd_for(b)]
    assert small[0] == accel.WINOGRAD_MIN_BATCH and small == list(range(accel.WINOGRAD_MIN_BATCH, 8))
    monkeypatch.setattr(accel, "ONNX_DYNAMIC_BATCH_BYTES", 1)
    assert [b for b in range(1, 8) if acc.winograd_for(b)] == list(range(accel.WINOGRAD_MIN_BATCH_LARGE, 8))
    assert accel.WINOGRAD_MIN_BATCH_LARGE < accel.WINOGRAD_MIN_BATCH
    onnx = SamplingAccelerator(p, "onnx", sampler="ddim", num_inference_steps=10)
    assert not any(onnx.winograd_for(b) for b in range(1, 12))  # ONNX Runtime keeps the plain form


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 6, 8, 16])
def test_winograd_conv_matches_torch_convolution(kernel_size, length):
    """F(4, k) over tiles of 4 positions, a partial last tile and the zero padding included; axes
    short enough for one tile with the roles swapped (2t - 1 < k + 3 transform points) use it."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 7, kernel_size, padding=kernel_size // 2)
    x = torch.randn(3, 6, length) * 10
    with torch.no_grad():
        form = accel._WinogradConv(conv, length)
        assert form.n == (2 * length - 1 if length <= 4 and 2 * length - 1 < kernel_size + 3 else kernel_size + 3)
        out = form(x.transpose(1, 2)).transpose(1, 2)
        ref = torch.nn.functional.conv1d(x.double(), conv.weight.double(), conv.bias.double(), padding=kernel_size // 2)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-5)


def test_winograd_conv_rejects_convolutions_it_cannot_compute():
    for conv in (torch.nn.Conv1d(3, 4, 3, stride=2, padding=1), torch.nn.Conv1d(3, 4, 5, padding=1), torch.nn.Conv1d(3, 4, 7, padding=3),
                 torch.nn.Conv1d(4, 4, 3, padding=1, groups=2)):
        with pytest.raises(ValueError, match="Winograd form"):
            accel._WinogradConv(conv, 8)


def test_toom_cook_matrices_compute_the_correlation():
    for m, r in ((4, 5), (4, 3), (2, 3)):
        a_t, g, b_t = toom_cook(m, r)
        d, w = torch.randn(m + r - 1, dtype=torch.float64), torch.randn(r, dtype=torch.float64)
        ref = torch.stack([(w * d[i:i + r]).sum() for i in range(m)])
        torch.testing.assert_close(a_t @ ((g @ w) * (b_t @ d)), ref)


def test_time_major_conv_matches_torch_convolutions():
    torch.manual_seed(0)
    for conv in (torch.nn.Conv1d(3, 4, 5, padding=2), torch.nn.Conv1d(3, 4, 3, stride=2, padding=1), torch.nn.Conv1d(3, 4, 1),
                 torch.nn.ConvTranspose1d(3, 4, 4, stride=2, padding=1), torch.nn.Conv1d(3, 4, 3, padding=0)):
        x = torch.randn(2, 3, 8)
        with torch.no_grad():
            ref = conv(x)
            out = accel._TimeMajorConv(conv, 8)(x.transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="time-major"):
        accel._TimeMajorConv(torch.nn.Conv1d(4, 4, 3, groups=2), 8)


def test_mish_closed_form_matches_torch():
    big = torch.tensor([-30.0, -1.0, 0.0, 1.0, 25.0, 90.0])
    torch.testing.assert_close(accel._MishExp()(big), torch.nn.functional.mish(big))


def test_export_leaves_the_training_mode_of_wrapped_modules_as_it_was():
    p = make_policy(**CASES["image"])
    cam = p.image_encoder.cameras["cam"]
    for training in (False, True):
        p.train(training)
        accel.OnnxModel.export(accel._CameraFeatures(cam), {"x": (3, 36, 36)})  # the wrapper itself starts in train mode
        assert all(m.training == training for m in p.modules())


def test_failed_image_encoder_export_falls_back_to_eager_with_reason(tmp_path, monkeypatch):
    p = make_policy(**CASES["image"])
    obs = make_obs(p, 2)
    noise = torch.randn(2, *p.noise_shape())
    monkeypatch.setenv("DP_GYM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(accel.OnnxModel, "_models", type(accel.OnnxModel._models)())
    real_export = accel.OnnxModel.export

    def broken_for_cameras(module, shapes):
        if isinstance(module, accel._CameraFeatures):
            raise RuntimeError("unsupported operator aten::bar")
        return real_export(module, shapes)

    monkeypatch.setattr(accel.OnnxModel, "export", staticmethod(broken_for_cameras))
    acc = SamplingAccelerator(p, "onnx", sampler="ddim", num_inference_steps=10)
    with pytest.warns(RuntimeWarning, match="image encoder failed.*aten::bar"):
        out = p.sample_actions(obs, noise=noise, accelerator=acc)
    assert acc.active_mode == "eager"
    assert torch.equal(out, p.sample_actions(obs, noise=noise))


def test_sessions_of_every_batch_size_an_agent_meets_are_kept(monkeypatch):
    # n envs ask for every batch size from 1 to n as episodes end at different steps: each is
    # compiled once, then reused (least recently used dropped only beyond ONNX_SESSIONS_BYTES).
    monkeypatch.setattr(accel.OnnxModel, "_sessions", type(accel.OnnxModel._sessions)())
    built = []
    real = accel._OpenVinoSession.__init__
    monkeypatch.setattr(accel._OpenVinoSession, "__init__", lambda self, m, b, t, prec: built.append(b) or real(self, m, b, t, prec))
    p = make_policy()
    c_shape = (p.denoiser.condition(torch.zeros(1, dtype=torch.long), torch.zeros(1, 2, 5)).shape[1],)
    trunk = OnnxTrunk(p.denoiser, (8, 2), c_shape, "openvino")
    for _ in range(2):
        for b in range(1, 11):
            out = trunk(torch.randn(b, 8, 2), torch.randn(b, *c_shape))
            assert out.shape == (b, 8, 2)
    assert built == list(range(1, 11))
    monkeypatch.setattr(accel, "ONNX_SESSIONS_BYTES", 3 * len(trunk.model))  # room for three
    trunk(torch.randn(11, 8, 2), torch.randn(11, *c_shape))
    assert [k[1] for k in accel.OnnxModel._sessions] == [9, 10, 11]


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_a_large_model_gets_one_dynamic_batch_session_for_every_batch_size(monkeypatch, runtime):
    """Above ONNX_DYNAMIC_BATCH_BYTES (the paper UNet) a model is compiled once, batch axis dynamic,
    and gives the fixed-batch sessions' outputs at every batch size."""
    monkeypatch.setattr(accel.OnnxModel, "_sessions", type(accel.OnnxModel._sessions)())
    p = make_policy()
    c_shape = (p.denoiser.condition(torch.zeros(1, dtype=torch.long), torch.zeros(1, 2, 5)).shape[1],)
    trunk = OnnxTrunk(p.denoiser, (8, 2), c_shape, runtime)
    inputs = {b: (torch.randn(b, 8, 2), torch.randn(b, *c_shape)) for b in (1, 3, 6)}
    fixed = {b: trunk(*xc) for b, xc in inputs.items()}
    assert sorted(k[1] for k in accel.OnnxModel._sessions) == [1, 3, 6]
    monkeypatch.setattr(accel, "ONNX_DYNAMIC_BATCH_BYTES", len(trunk.model) - 1)
    for b, xc in inputs.items():
        torch.testing.assert_close(trunk(*xc), fixed[b], atol=1e-5, rtol=1e-5)
    assert sorted(k[1] for k in accel.OnnxModel._sessions) == [0, 1, 3, 6]  # one more session, batch 0: dynamic
