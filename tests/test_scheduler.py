"""NoiseScheduler: closed forms of the cosine schedule, forward noising, DDPM / DDIM steps, and
agreement with diffusers' DDPMScheduler / DDIMScheduler."""

from __future__ import annotations

import math

import pytest
import torch

from dp_gym.policies.diffusion.scheduler import NoiseScheduler, betas_for_schedule

T = 100


def f(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def abar_closed(t: int, T: int = T) -> float:
    """ᾱ_t = f((t+1)/T) / f(0): the cumulative product after step t (0-based)."""
    return f((t + 1) / T) / f(0)


# --- schedule -------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [100, 1000])
def test_cosine_betas_closed_form(n):
    betas = betas_for_schedule("squaredcos_cap_v2", n)
    assert betas.dtype == torch.float64 and betas.shape == (n,)
    assert torch.all(betas > 0) and torch.all(betas <= 0.999)
    ab = torch.cumprod(1 - betas, 0)
    capped = betas >= 0.999 - 1e-12
    # the cap only bites at the very end of the schedule
    first_capped = int(torch.nonzero(capped)[0]) if capped.any() else n
    assert first_capped >= n - 2
    for t in range(first_capped):
        assert ab[t].item() == pytest.approx(abar_closed(t, n), rel=1e-9, abs=1e-15)
    # betas themselves: β_t = 1 - f((t+1)/T) / f(t/T)
    for t in (0, 1, n // 2, first_capped - 1):
        assert betas[t].item() == pytest.approx(1 - f((t + 1) / n) / f(t / n), rel=1e-9)


def test_scheduler_buffers_match_closed_form():
    s = NoiseScheduler(T, "squaredcos_cap_v2")
    ab = s.alphas_cumprod.double()
    for t in range(T - 1):  # the last β is capped at 0.999
        assert ab[t].item() == pytest.approx(abar_closed(t), rel=2e-5, abs=1e-9)
    assert s.betas[-1].item() == pytest.approx(0.999)
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    # ᾱ strictly decreasing from ~1 to ~0
    assert torch.all(ab[1:] < ab[:-1]) and ab[0] > 0.99 and ab[-1] < 1e-5
    # buffers are not persisted: the schedule is rebuilt from the config
    assert s.state_dict() == {}


def test_linear_and_unknown_schedule():
    b = betas_for_schedule("linear", 50)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(2e-2)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        betas_for_schedule("cosine", 10)


def test_timesteps():
    s = NoiseScheduler(T)
    assert s.timesteps(100) == list(range(99, -1, -1))
    assert s.timesteps(10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert s.timesteps(1) == [0]
    for bad in (0, 101):
        with pytest.raises(ValueError, match="num_inference_steps"):
            s.timesteps(bad)


# --- forward process ------------------------------------------------------------------------

def test_add_noise_closed_form():
    s = NoiseScheduler(T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 8, 3, generator=g)
    eps = torch.randn(6, 8, 3, generator=g)
    t = torch.tensor([0, 5, 50, 98, 99, 17])
    xt = s.add_noise(x0, eps, t)
    for i, ti in enumerate(t.tolist()):
        ab = abar_closed(ti) if ti < T - 1 else float(s.alphas_cumprod[ti])
        expected = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i]
        torch.testing.assert_close(xt[i], expected, atol=2e-5, rtol=1e-5)
    # t = 0 barely perturbs, t = T-1 is nearly pure noise
    assert (xt[0] - x0[0]).abs().max() < 0.1
    assert (xt[4] - eps[4]).abs().max() < 1e-2


# --- reverse steps --------------------------------------------------------------------------

@pytest.mark.parametrize("t,prev_t", [(50, 49), (1, 0), (0, -1), (90, 80), (10, 0)])
def test_ddpm_step_posterior_mean_and_variance(t, prev_t):
    s = NoiseScheduler(T, clip_sample=False)
    g = torch.Generator().manual_seed(t)
    x_t = torch.randn(4, 8, 2, generator=g, dtype=torch.float64).float()
    eps = torch.randn(4, 8, 2, generator=g, dtype=torch.float64).float()
    ab_t = float(s.alphas_cumprod[t])
    ab_prev = float(s.alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
    beta = 1 - ab_t / ab_prev
    x0 = (x_t.double() - math.sqrt(1 - ab_t) * eps.double()) / math.sqrt(ab_t)
    # posterior mean μ̃(x_t, x̂_0) from Ho et al. eq. (7)
    mean = math.sqrt(ab_prev) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t) * x_t.double()
    zero = torch.zeros_like(x_t)
    got = s.ddpm_step(eps, t, x_t, zero, prev_t)
    torch.testing.assert_close(got.double(), mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.ddpm_step(eps, t, x_t, None, prev_t), got)
    if prev_t == t - 1 and prev_t >= 0:
        torch.testing.assert_close(s.ddpm_step(eps, t, x_t, None), got)  # default prev_t = t-1
    noise = torch.randn(4, 8, 2, generator=g)
    noisy = s.ddpm_step(eps, t, x_t, noise, prev_t)
    if prev_t < 0:
        torch.testing.assert_close(noisy, got)  # no noise added at the last step
    else:
        var = (1 - ab_prev) / (1 - ab_t) * beta
        torch.testing.assert_close((noisy - got).double(), math.sqrt(var) * noise.double(), atol=1e-5, rtol=1e-4)


def test_ddpm_step_clips_x0():
    s_clip, s_free = NoiseScheduler(T, clip_sample=True), NoiseScheduler(T, clip_sample=False)
    t = 30
    x0 = torch.full((1, 4, 1), 3.0)
    eps = torch.zeros_like(x0)
    x_t = s_free.add_noise(x0, eps, torch.tensor([t]))
    # with the true ε and t → -1, the unclipped step returns x0, the clipped one returns 1
    torch.testing.assert_close(s_free.ddpm_step(eps, t, x_t, None, -1), x0, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(s_clip.ddpm_step(eps, t, x_t, None, -1), torch.ones_like(x0))


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [0, 1, 37, 90, 98])
def test_ddim_true_eps_recovers_x0(clip, t):
    s = NoiseScheduler(T, clip_sample=clip)
    g = torch.Generator().manual_seed(t)
    x0 = torch.rand(3, 8, 2, generator=g) * 1.8 - 0.9  # inside [-1, 1] so clipping is inactive
    if not clip:
        x0 = x0 * 3
    eps = torch.randn(3, 8, 2, generator=g)
    x_t = s.add_noise(x0, eps, torch.full((3,), t))
    tol = 1e-4 if t < 90 else 5e-3  # 1/sqrt(ᾱ_t) amplifies float32 rounding at large t
    torch.testing.assert_close(s.ddim_step(eps, t, x_t, -1), x0, atol=tol, rtol=0)
    # deterministic DDIM stays on the trajectory: x_t → x_prev = add_noise(x0, ε, prev)
    if t >= 10:
        prev = t - 10
        torch.testing.assert_close(s.ddim_step(eps, t, x_t, prev), s.add_noise(x0, eps, torch.full((3,), prev)),
                                   atol=tol, rtol=0)


def test_ddim_clip_keeps_model_eps():
    """With x̂_0 clipped, the direction term still uses the model's ε (the paper's diffusers default)."""
    s = NoiseScheduler(T, clip_sample=True)
    t, prev = 60, 40
    x_t = torch.full((1, 2, 1), 0.5)
    eps = torch.full((1, 2, 1), -3.0)  # implies x̂_0 far above +1
    ab_t, ab_p = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[prev])
    x0 = 1.0
    expected = math.sqrt(ab_p) * x0 + math.sqrt(1 - ab_p) * -3.0
    torch.testing.assert_close(s.ddim_step(eps, t, x_t, prev), torch.full((1, 2, 1), expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t,prev_t", [(0, -1), (1, 0), (37, 27), (90, 80), (98, 97)])
def test_sample_prediction_is_the_same_step_as_eps_prediction(t, prev_t):
    """Given the true x₀ (x₀-prediction) or the true ε (ε-prediction) of the same x_t, both
    parameterisations take the same DDPM and DDIM steps; the training targets are x₀ and ε."""
    s_eps = NoiseScheduler(T, prediction_type="epsilon")
    s_x0 = NoiseScheduler(T, prediction_type="sample")
    g = torch.Generator().manual_seed(t)
    x0 = torch.rand(3, 8, 2, generator=g) * 1.8 - 0.9
    eps = torch.randn(3, 8, 2, generator=g)
    x_t = s_eps.add_noise(x0, eps, torch.full((3,), t))
    tol = 1e-4 if t < 90 else 5e-3
    torch.testing.assert_close(s_x0.ddim_step(x0, t, x_t, prev_t), s_eps.ddim_step(eps, t, x_t, prev_t), atol=tol, rtol=0)
    noise = torch.randn(3, 8, 2, generator=g)
    torch.testing.assert_close(s_x0.ddpm_step(x0, t, x_t, noise, prev_t), s_eps.ddpm_step(eps, t, x_t, noise, prev_t),
                               atol=tol, rtol=0)
    assert s_eps.training_target(x0, eps) is eps and s_x0.training_target(x0, eps) is x0


def test_sample_prediction_clips_the_network_output():
    s = NoiseScheduler(T, prediction_type="sample")
    x_t = torch.zeros(1, 2, 1)
    # an x̂₀ of 5 is clipped to 1; the last step (prev_t = -1) returns x̂₀ itself
    torch.testing.assert_close(s.ddim_step(torch.full_like(x_t, 5.0), 20, x_t, -1), torch.ones_like(x_t))
    torch.testing.assert_close(s.ddpm_step(torch.full_like(x_t, -5.0), 20, x_t, None, -1), -torch.ones_like(x_t))


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        NoiseScheduler(T, prediction_type="v_prediction")


# --- agreement with diffusers ---------------------------------------------------------------

def _diffusers():
    return pytest.importorskip("diffusers")


def _inputs(seed, shape=(3, 16, 2), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale, torch.randn(shape, generator=g)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("n_inf", [100, 10])
def test_matches_diffusers_ddpm(n_inf, prediction_type):
    diffusers = _diffusers()
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                  variance_type="fixed_small", prediction_type=prediction_type)
    ref.set_timesteps(n_inf)
    ours = NoiseScheduler(T, "squaredcos_cap_v2", clip_sample=True, prediction_type=prediction_type)
    ts = ours.timesteps(n_inf)
    assert ts == ref.timesteps.tolist()
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.float(), atol=1e-6, rtol=1e-4)
    for i, t in enumerate(ts):
        prev_t = ts[i + 1] if i + 1 < len(ts) else -1
        for scale in (0.3, 3.0):  # clipping inactive / active (mostly)
            x_t, eps = _inputs(1000 * i + int(scale * 10), scale=scale)
            seed = 7 + i
            expected = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(seed)).prev_sample
            noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(seed))
            got = ours.ddpm_step(eps, t, x_t, noise if prev_t >= 0 else None, prev_t)
            torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4, msg=f"t={t} prev={prev_t} scale={scale}")


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("n_inf", [100, 10])
def test_matches_diffusers_ddim(n_inf, prediction_type):
    diffusers = _diffusers()
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                  set_alpha_to_one=True, steps_offset=0, prediction_type=prediction_type)
    ref.set_timesteps(n_inf)
    ours = NoiseScheduler(T, "squaredcos_cap_v2", clip_sample=True, prediction_type=prediction_type)
    ts = ours.timesteps(n_inf)
    assert ts == ref.timesteps.tolist()
    for i, t in enumerate(ts):
        prev_t = ts[i + 1] if i + 1 < len(ts) else -1
        # (a) clipping inactive: x_t built from an in-range x0 → identical to diffusers' default step
        g = torch.Generator().manual_seed(i)
        x0 = torch.rand(3, 16, 2, generator=g) * 1.6 - 0.8
        eps_true = torch.randn(3, 16, 2, generator=g)
        x_t = ours.add_noise(x0, eps_true, torch.full((3,), t))
        eps = eps_true + 0.05 * torch.randn(3, 16, 2, generator=g)
        if prediction_type == "epsilon":
            out = eps
            pred_x0 = (x_t - (1 - ours.alphas_cumprod[t]).sqrt() * eps) / ours.alphas_cumprod[t].sqrt()
        else:
            out = pred_x0 = x0 + 0.05 * torch.randn(3, 16, 2, generator=g)
        if pred_x0.abs().max() < 1:
            expected = ref.step(out, t, x_t, eta=0.0).prev_sample
            torch.testing.assert_close(ours.ddim_step(out, t, x_t, prev_t), expected, atol=1e-4, rtol=1e-4,
                                       msg=f"t={t} (no clipping)")
        # (b) arbitrary inputs with clipping active: diffusers' default step (model ε kept)
        x_t, eps = _inputs(100 + i, scale=2.0)
        expected = ref.step(eps, t, x_t, eta=0.0).prev_sample
        torch.testing.assert_close(ours.ddim_step(eps, t, x_t, prev_t), expected, atol=2e-4, rtol=1e-4, msg=f"t={t}")


def test_full_ddim_chain_matches_diffusers():
    """A whole 10-step DDIM chain with a fixed fake ε-network agrees with diffusers."""
    diffusers = _diffusers()
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                  set_alpha_to_one=True, steps_offset=0)
    ref.set_timesteps(10)
    ours = NoiseScheduler(T)
    target = torch.linspace(-0.9, 0.9, 16).view(1, 16, 1).expand(2, 16, 2)

    def fake_eps(x, t):  # the ε that points exactly at `target`
        ab = ours.alphas_cumprod[t]
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    x = torch.randn(2, 16, 2, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    ts = ours.timesteps(10)
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        x = ours.ddim_step(fake_eps(x, t), t, x, prev)
        y = ref.step(fake_eps(y, t), t, y, eta=0.0).prev_sample
    torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x, target, atol=1e-3, rtol=0)
