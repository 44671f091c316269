"""Diffusion policy: UNet shapes, config validation, seeded sampling, action-chunk slicing,
observation validation, learning, and the multimodality property that motivates the method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dp_gym.policies.diffusion.config import DiffusionConfig
from dp_gym.policies.diffusion.policy import DiffusionPolicy
from dp_gym.policies.policy import check_obs
from dp_gym.policies.diffusion.unet import ConditionalUnet1D

OBS_D, A = 3, 2


def tiny_config(**kw) -> DiffusionConfig:
    base = dict(obs_shapes={"obs": [OBS_D]}, action_dim=A, horizon=16, n_obs_steps=2, n_action_steps=8,
                down_dims=[16, 32], diffusion_step_embed_dim=16, num_inference_steps=10)
    base.update(kw)
    return DiffusionConfig(**base)


def tiny_policy(**kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    p = DiffusionPolicy(tiny_config(**kw))
    g = torch.Generator().manual_seed(1)
    p.fit_normalizers({"obs": torch.randn(100, OBS_D, generator=g) * 3, "action": torch.rand(100, A, generator=g) * 10})
    return p.eval()


def obs_batch(b=3, to=2, seed=0):
    return {"obs": torch.randn(b, to, OBS_D, generator=torch.Generator().manual_seed(seed))}


# --- UNet -----------------------------------------------------------------------------------

@pytest.mark.parametrize("down_dims", [(32, 64), (32, 64, 128)])
@pytest.mark.parametrize("B", [1, 4])
def test_unet_output_shape(down_dims, B):
    net = ConditionalUnet1D(action_dim=A, cond_dim=5, n_obs_steps=2, down_dims=down_dims, diffusion_step_embed_dim=16)
    x = torch.randn(B, 16, A)
    out = net(x, torch.randint(0, 100, (B,)), torch.randn(B, 2, 5))
    assert out.shape == (B, 16, A)
    assert torch.isfinite(out).all()
    # scalar timestep is broadcast
    assert net(x, 5, torch.randn(B, 2, 5)).shape == (B, 16, A)


def test_unet_depends_on_inputs():
    net = ConditionalUnet1D(action_dim=A, cond_dim=5, n_obs_steps=2, down_dims=(16, 32), diffusion_step_embed_dim=16)
    x, c = torch.randn(2, 8, A), torch.randn(2, 2, 5)
    base = net(x, 10, c)
    assert not torch.allclose(base, net(x, 60, c))
    assert not torch.allclose(base, net(x, 10, c + 1))
    # batch elements are independent
    torch.testing.assert_close(net(x[:1], 10, c[:1]), base[:1], atol=1e-5, rtol=1e-5)


def test_unet_bad_shapes_raise():
    net = ConditionalUnet1D(action_dim=A, cond_dim=5, n_obs_steps=2, down_dims=(16, 32), diffusion_step_embed_dim=16)
    with pytest.raises(ValueError, match="sample must be"):
        net(torch.randn(2, 16, A + 1), 1, torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match="sample must be"):
        net(torch.randn(16, A), 1, torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match="cond must be"):
        net(torch.randn(2, 16, A), 1, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="cond must be"):
        net(torch.randn(2, 16, A), 1, torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="divisible by n_groups"):
        ConditionalUnet1D(A, 5, 2, down_dims=(12, 32))
    with pytest.raises(ValueError, match="odd"):
        ConditionalUnet1D(A, 5, 2, down_dims=(16, 32), kernel_size=4)
    with pytest.raises(ValueError, match="must not be empty"):
        ConditionalUnet1D(A, 5, 2, down_dims=())


# --- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(horizon=8, n_obs_steps=2, n_action_steps=8), "must cover"),
        (dict(denoiser="lstm"), "denoiser must be"),
        (dict(horizon=18, down_dims=[16, 32, 64]), "divisible by 4"),
        (dict(horizon=9, n_obs_steps=1, n_action_steps=8, down_dims=[16, 32]), "divisible by 2"),
        (dict(sampler="euler"), "sampler must be"),
        (dict(prediction_type="v_prediction"), "prediction_type must be one of"),
        (dict(num_inference_steps=200), "cannot exceed"),
        (dict(action_dim=0), "action_dim must be >= 1"),
        (dict(obs_shapes={}), "at least one"),
        (dict(obs_shapes={"img": [3, 96, 96]}), "low-dim"),
        (dict(obs_noise_std=-0.1), "obs_noise_std must be"),
        (dict(obs_noise_std=float("nan")), "obs_noise_std must be"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kw)


def test_config_dict_round_trip():
    c = tiny_config(sampler="ddim")
    d = c.to_dict()
    assert DiffusionConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="unknown DiffusionConfig keys"):
        DiffusionConfig.from_dict({**d, "bogus": 1})
    # configs saved before prediction_type existed load as the paper's ε-prediction
    assert DiffusionConfig.from_dict({k: v for k, v in d.items() if k != "prediction_type"}).prediction_type == "epsilon"
    # transformer horizons need no divisibility
    assert tiny_config(denoiser="transformer", horizon=10).horizon == 10


# --- sampling -------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_deterministic_with_generator(sampler):
    p = tiny_policy()
    obs = obs_batch()
    kw = dict(sampler=sampler, num_inference_steps=10)
    a1 = p.sample_actions(obs, generator=torch.Generator().manual_seed(3), **kw)
    a2 = p.sample_actions(obs, generator=torch.Generator().manual_seed(3), **kw)
    assert a1.shape == (3, 16, A)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    a3 = p.sample_actions(obs, generator=torch.Generator().manual_seed(4), **kw)
    assert not torch.allclose(a1, a3)
    # samples are clipped to the normalised range → inside the action data range [0, 10]
    lo, hi = p.action_normalizer.data_min, p.action_normalizer.data_max
    assert torch.all(a1 >= lo - 1e-4) and torch.all(a1 <= hi + 1e-4)


def test_ddpm_noise_changes_with_seed_but_ddim_only_via_init():
    """DDIM is deterministic given x_T; DDPM also injects noise at every step."""
    p = tiny_policy()
    obs = obs_batch()
    g = torch.Generator().manual_seed(0)
    full_ddpm = p.sample_actions(obs, generator=g, sampler="ddpm", num_inference_steps=10)
    # DDPM consumed more random numbers than the initial draw
    g2 = torch.Generator().manual_seed(0)
    torch.randn(3, 16, A, generator=g2)
    assert g.get_state().ne(g2.get_state()).any()
    assert torch.isfinite(full_ddpm).all()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_noise_scale_is_a_sampling_temperature(sampler):
    """Scale 1 is the default; scale 0 makes the sample independent of the draws; scales in between
    give samples between the two; bad scales are refused by name."""
    p = tiny_policy()
    obs = obs_batch()
    shape = (3, *p.noise_shape(10, sampler))
    n1, n2 = (torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    kw = dict(sampler=sampler, num_inference_steps=10)
    default = p.sample_actions(obs, noise=n1, **kw)
    torch.testing.assert_close(p.sample_actions(obs, noise=n1, noise_scale=1.0, **kw), default, rtol=0, atol=0)
    zero1, zero2 = (p.sample_actions(obs, noise=n, noise_scale=0.0, **kw) for n in (n1, n2))
    torch.testing.assert_close(zero1, zero2, rtol=0, atol=0)
    assert not torch.allclose(zero1, default)
    half = p.sample_actions(obs, noise=n1, noise_scale=0.5, **kw)
    assert not torch.allclose(half, default) and not torch.allclose(half, zero1)
    for bad in (-0.1, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="noise_scale"):
            p.sample_actions(obs, noise=n1, noise_scale=bad, **kw)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_predict_chunk_is_slice_of_sequence(sampler):
    p = tiny_policy(n_obs_steps=3, n_action_steps=5)
    obs = obs_batch(b=2, to=3)
    seq = p.sample_actions(obs, generator=torch.Generator().manual_seed(9), sampler=sampler)
    chunk = p.predict_chunk(obs, generator=torch.Generator().manual_seed(9), sampler=sampler)
    assert chunk.shape == (2, 5, A)
    torch.testing.assert_close(chunk, seq[:, 2:7], rtol=0, atol=0)


def test_config_sampler_used_by_default():
    p = tiny_policy(sampler="ddim", num_inference_steps=5)
    obs = obs_batch()
    a = p.sample_actions(obs, generator=torch.Generator().manual_seed(1))
    b = p.sample_actions(obs, generator=torch.Generator().manual_seed(1), sampler="ddim", num_inference_steps=5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="sampler must be"):
        p.sample_actions(obs, sampler="heun")


def test_obs_validation_errors():
    p = tiny_policy()
    with pytest.raises(KeyError, match=r"missing keys \['obs'\]"):
        p.predict_chunk({"state": torch.zeros(1, 2, OBS_D)})
    with pytest.raises(ValueError, match=r"must have shape \(batch, 2, 3\).*\(1, 3, 3\)"):
        p.predict_chunk({"obs": torch.zeros(1, 3, OBS_D)})
    with pytest.raises(ValueError, match="must have shape"):
        p.predict_chunk({"obs": torch.zeros(2, OBS_D)})
    with pytest.raises(ValueError, match="must have shape"):
        p.predict_chunk({"obs": torch.zeros(1, 2, OBS_D + 1)})
    bad = torch.zeros(2, 2, OBS_D)
    bad[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        p.predict_chunk({"obs": bad})
    with pytest.raises(TypeError, match="float tensor.*int64"):
        p.predict_chunk({"obs": torch.zeros(1, 2, OBS_D, dtype=torch.long)})
    with pytest.raises(ValueError, match="batch"):
        check_obs({"a": torch.zeros(2, 1, 1), "b": torch.zeros(3, 1, 1)}, {"a": [1], "b": [1]}, 1)


def test_obs_noise_augments_training_conditioning_only():
    """``obs_noise_std`` adds Gaussian noise of that std to the normalised low-dim features in
    training; in eval mode (validation, sampling) the loss is the noise-free one."""
    obs, act = obs_batch(b=256), torch.rand(256, 16, A) * 10
    clean, noisy = tiny_policy(), tiny_policy(obs_noise_std=0.5)  # same weights and normalisers
    delta = noisy.encode_obs(obs, obs_noise_std=0.5) - noisy.normalized_obs(obs)
    assert abs(delta.std().item() - 0.5) < 0.05 and abs(delta.mean().item()) < 0.05
    assert torch.equal(noisy.encode_obs(obs), noisy.normalized_obs(obs))
    batch = {"obs": obs["obs"], "action": act}

    def loss(policy):
        torch.manual_seed(3)
        return policy.compute_loss(batch).item()

    assert loss(noisy.eval()) == loss(clean.eval())
    assert loss(noisy.train()) != loss(clean.train())


# --- learning -------------------------------------------------------------------------------

def _train(policy, obs, act, steps, lr=1e-3, bs=32, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=1e-6)
    losses = []
    for _ in range(steps):
        ids = torch.randint(len(act), (bs,), generator=g)
        loss = policy.compute_loss({"obs": obs[ids], "action": act[ids]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    policy.eval()
    return losses


def _synthetic(n=256, to=2, horizon=16, seed=0):
    """Actions are a smooth function of the observation: a ramp whose slope/offset come from obs."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, to, OBS_D, generator=g)
    t = torch.linspace(0, 1, horizon).view(1, horizon, 1)
    act = obs[:, -1:, :A] + t * obs[:, -1:, 1:1 + A]
    return obs, act


@pytest.mark.parametrize("denoiser,prediction_type", [("unet", "epsilon"), ("transformer", "epsilon"), ("unet", "sample")])
def test_short_training_lowers_loss(denoiser, prediction_type):
    kw = dict(denoiser=denoiser, prediction_type=prediction_type)
    if denoiser == "transformer":
        kw.update(n_layer=1, n_head=2, n_emb=32, p_drop_attn=0.0)
    torch.manual_seed(0)
    p = DiffusionPolicy(tiny_config(**kw))
    obs, act = _synthetic()
    p.fit_normalizers({"obs": obs, "action": act})
    losses = _train(p, obs, act, steps=150, lr=2e-3)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.7 * first, (first, last)
    # trained model still produces correctly shaped, finite actions
    out = p.predict_chunk({"obs": obs[:4]}, generator=torch.Generator().manual_seed(0), sampler="ddim")
    assert out.shape == (4, 8, A) and torch.isfinite(out).all()


def test_transformer_denoiser_shapes():
    p = tiny_policy(denoiser="transformer", horizon=10, n_action_steps=8, n_layer=1, n_head=2, n_emb=32)
    x = torch.randn(3, 10, A)
    out = p.denoiser(x, torch.tensor([0, 50, 99]), torch.randn(3, 2, OBS_D))
    assert out.shape == (3, 10, A)
    assert p.predict_chunk(obs_batch(), sampler="ddim").shape == (3, 8, A)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_multimodal_actions_are_not_averaged(prediction_type):
    """Two equally good action modes (all +0.7 or all -0.7) from the same observation: the
    diffusion policy samples both modes; an MSE regressor predicts their average (≈ 0). With
    x₀-prediction the network's output at high noise is that average too, but the chain still
    commits to one mode."""
    H, To, Ta, N = 8, 1, 4, 256
    sign = torch.where(torch.arange(N) % 2 == 0, 1.0, -1.0)
    act = (0.7 * sign).view(N, 1, 1).expand(N, H, 1).contiguous()
    obs = torch.zeros(N, To, 1)

    torch.manual_seed(0)
    cfg = DiffusionConfig(obs_shapes={"obs": [1]}, action_dim=1, horizon=H, n_obs_steps=To, n_action_steps=Ta,
                          down_dims=[32, 64], diffusion_step_embed_dim=32, sampler="ddim", num_inference_steps=10,
                          prediction_type=prediction_type)
    p = DiffusionPolicy(cfg)
    p.fit_normalizers({"obs": obs, "action": act})
    losses = _train(p, obs, act, steps=300, lr=1e-3, bs=64)
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])

    samples = p.sample_actions({"obs": torch.zeros(200, To, 1)}, generator=torch.Generator().manual_seed(1))
    means = samples.mean(dim=(1, 2))
    frac_pos = (means - 0.7).abs().lt(0.25).float().mean().item()
    frac_neg = (means + 0.7).abs().lt(0.25).float().mean().item()
    frac_mid = means.abs().lt(0.35).float().mean().item()
    assert frac_pos >= 0.2 and frac_neg >= 0.2, (frac_pos, frac_neg)
    assert frac_mid < 0.15, frac_mid
    # each sample commits to one mode for the whole sequence (no switching mid-sequence)
    committed = (samples.squeeze(-1) * torch.sign(means)[:, None]).gt(0.35).all(dim=1)
    assert committed.float().mean() > 0.8

    # Mean regression on the same data averages the two modes.
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(To, 32), nn.Mish(), nn.Linear(32, H))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        ids = torch.randint(N, (64,), generator=g)
        loss = nn.functional.mse_loss(mlp(obs[ids].flatten(1)), act[ids, :, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = mlp(torch.zeros(1, To))
    assert pred.mean().abs() < 0.2, pred
    assert pred.abs().max() < 0.35  # far from both modes
