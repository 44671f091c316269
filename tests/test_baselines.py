"""Baselines: explicit BC (MLP + MSE) and implicit BC (energy MLP + InfoNCE + derivative-free
optimiser): config validation, learning, the DFO on a known energy, reproducible sampling,
checkpoints, the agent's queue semantics, training from the CLI config, and the multimodal toy
problem that separates mean regression from an energy model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dp_gym import DiffusionAgent
from dp_gym import tasks as tasks_mod
from dp_gym.checkpoint import load_policy, save_policy
from dp_gym.data.replay import EpisodeData
from dp_gym.policies import make_policy, model_sizes, policy_classes
from dp_gym.policies.bc.config import BCConfig
from dp_gym.policies.bc.policy import BCPolicy
from dp_gym.policies.ibc.config import IBCConfig
from dp_gym.policies.ibc.policy import IBCPolicy, dfo_minimize, dfo_noise_shape
from dp_gym.train import TrainConfig, build_policy_config, train

OBS_D, A = 3, 2


def config(kind: str, **kw):
    base = dict(obs_shapes={"obs": [OBS_D]}, action_dim=A, horizon=4, n_obs_steps=2, n_action_steps=3, hidden_dims=[32, 32])
    if kind == "ibc":
        base.update(n_counter_examples=32, n_samples=64, n_iters=2)
    base.update(kw)
    return (BCConfig if kind == "bc" else IBCConfig)(**base)


def fitted(kind: str, **kw):
    torch.manual_seed(0)
    p = make_policy(kind, config(kind, **kw))
    g = torch.Generator().manual_seed(1)
    p.fit_normalizers({"obs": torch.randn(100, OBS_D, generator=g) * 3, "action": torch.rand(100, A, generator=g) * 10})
    return p.eval()


def obs_batch(b=3, to=2, seed=0):
    return {"obs": torch.randn(b, to, OBS_D, generator=torch.Generator().manual_seed(seed))}


def fit_steps(policy, obs, act, steps, lr, bs=None, seed=0, decay_last=0):
    """Adam on (obs, act); full batch unless ``bs``; the learning rate falls linearly to 0 over the
    last ``decay_last`` steps (like the trainer's cosine schedule). Returns the per-step losses."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (steps - s) / decay_last) if decay_last else 1.0)
    policy.train()
    losses = []
    for _ in range(steps):
        ids = torch.randint(len(act), (bs,), generator=g) if bs else slice(None)
        loss = policy.compute_loss({"obs": obs[ids], "action": act[ids]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    policy.eval()
    return losses


def smooth_data(n, to, horizon, seed=0):
    """Actions are a smooth function of the last observation (a ramp over the window)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, to, OBS_D, generator=g)
    t = torch.linspace(0, 1, horizon).view(1, horizon, 1)
    act = torch.tanh(obs[:, -1:, :A]) + 0.5 * t * obs[:, -1:, 1 : 1 + A]
    return obs, act


# --- registry and configs -------------------------------------------------------------------

def test_registry_and_model_sizes():
    classes = policy_classes()
    assert classes["bc"] == (BCPolicy, BCConfig) and classes["ibc"] == (IBCPolicy, IBCConfig)
    assert {"small", "medium", "paper"} <= set(model_sizes("bc")) and model_sizes("ibc") == model_sizes("bc")
    with pytest.raises(ValueError, match="unknown policy type"):
        model_sizes("lstm")
    for kind in ("bc", "ibc"):
        # --model-size maps to MLP widths; the window is the shortest one holding the executed actions
        cfg = TrainConfig(policy=kind, model_size="medium", n_obs_steps=2, n_action_steps=8)
        pc = build_policy_config(cfg, {"obs": [5]}, 2)
        assert pc["hidden_dims"] == model_sizes(kind)["medium"]["hidden_dims"] and pc["horizon"] == 9
        p = make_policy(kind, pc)
        assert p.policy_type == kind and p.config.hidden_dims == [512, 512, 512]
        single = TrainConfig(policy=kind, n_action_steps=1, policy_overrides={"chunked": False})
        assert make_policy(kind, build_policy_config(single, {"obs": [5]}, 2)).config.horizon == 2
        with pytest.raises(ValueError, match="unknown model size"):
            build_policy_config(TrainConfig(policy=kind, model_size="huge"), {"obs": [5]}, 2)


@pytest.mark.parametrize("kind", ["bc", "ibc"])
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(chunked=False, n_action_steps=3), "n_action_steps == 1"),
        (dict(horizon=3, n_obs_steps=2, n_action_steps=3), "must cover"),
        (dict(hidden_dims=[]), "hidden_dims"),
        (dict(hidden_dims=[32, 0]), "hidden_dims"),
        (dict(activation="tanh"), "activation must be"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(action_dim=0), "action_dim must be >= 1"),
        (dict(n_obs_steps=0), "n_obs_steps must be >= 1"),
        (dict(obs_shapes={}), "at least one"),
        (dict(obs_shapes={"img": [3, 96, 96]}), "low-dim"),
    ],
)
def test_config_validation(kind, kw, match):
    with pytest.raises(ValueError, match=match):
        config(kind, **kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(n_counter_examples=0), "n_counter_examples"),
        (dict(n_samples=0), "n_samples"),
        (dict(n_iters=-1), "n_iters"),
        (dict(noise_scale=-0.1), "noise_scale"),
        (dict(noise_shrink=0.0), "noise_shrink"),
        (dict(noise_shrink=1.5), "noise_shrink"),
        (dict(temperature=0.0), "temperature"),
        (dict(dfo_select="mode"), "'argmax' or 'sample'"),
    ],
)
def test_ibc_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        config("ibc", **kw)


@pytest.mark.parametrize("kind", ["bc", "ibc"])
def test_config_dict_round_trip(kind):
    c = config(kind, chunked=False, n_action_steps=1, activation="relu", dropout=0.1)
    cls = type(c)
    assert cls.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match=f"unknown {cls.__name__} keys"):
        cls.from_dict({**c.to_dict(), "bogus": 1})


# --- shapes and interface -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bc", "ibc"])
@pytest.mark.parametrize("chunked,ta", [(True, 3), (False, 1)])
def test_predict_chunk_shapes_and_bounds(kind, chunked, ta):
    p = fitted(kind, chunked=chunked, n_action_steps=ta, dropout=0.1)
    out = p.predict_chunk(obs_batch(), generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, ta, A) and torch.isfinite(out).all()
    if kind == "ibc":  # DFO candidates live in the normalised box → inside the action data range
        lo, hi = p.action_normalizer.data_min, p.action_normalizer.data_max
        assert torch.all(out >= lo - 1e-4) and torch.all(out <= hi + 1e-4)
        assert p.noise_shape() == (3, 64, ta * A + 1)
        assert p.noise_shape(n_samples=10, n_iters=5) == (6, 10, ta * A + 1)
    with pytest.raises(KeyError, match="missing keys"):
        p.predict_chunk({"state": torch.zeros(1, 2, OBS_D)})
    with pytest.raises(ValueError, match="must have shape"):
        p.predict_chunk({"obs": torch.zeros(1, 3, OBS_D)})


def test_ibc_sampling_is_reproducible_and_per_sample():
    p = fitted("ibc")
    obs = obs_batch(b=4)
    a1 = p.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    a2 = p.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    assert not torch.equal(a1, p.predict_chunk(obs, generator=torch.Generator().manual_seed(4)))
    # explicit noise gives the same result as drawing it from the generator
    noise = torch.randn(4, *p.noise_shape(), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(p.predict_chunk(obs, noise=noise), a1, rtol=0, atol=0)
    # an element's result depends only on its own observation and noise, not on the batch
    one = p.predict_chunk({"obs": obs["obs"][2:3]}, noise=noise[2:3])
    torch.testing.assert_close(one, a1[2:3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="noise must have shape"):
        p.predict_chunk(obs, noise=noise[:, :2])
    with pytest.raises(TypeError, match="unknown IBC sampling arguments"):
        p.noise_shape(sampler="ddim")


def test_bc_is_deterministic():
    p = fitted("bc")
    obs = obs_batch()
    torch.testing.assert_close(p.predict_chunk(obs), p.predict_chunk(obs), rtol=0, atol=0)
    assert not p.stochastic  # the agent draws no noise for it:
    calls = []
    real = p.predict_chunk
    p.predict_chunk = lambda obs, **kw: calls.append(kw) or real(obs, **kw)
    DiffusionAgent(p).predict(obs["obs"][:, -1].numpy(), deterministic=True)
    assert calls == [{}]
    with pytest.raises(TypeError, match="deterministic"):
        p.noise_shape()


# --- learning -------------------------------------------------------------------------------

@pytest.mark.parametrize("chunked,ta", [(True, 3), (False, 1)])
def test_bc_overfits_tiny_dataset(chunked, ta):
    obs, act = smooth_data(64, 2, ta + 1)
    torch.manual_seed(0)
    p = BCPolicy(config("bc", horizon=ta + 1, n_action_steps=ta, chunked=chunked, hidden_dims=[64, 64]))
    p.fit_normalizers({"obs": obs.flatten(0, 1), "action": act.flatten(0, 1)})
    losses = fit_steps(p, obs, act, steps=400, lr=3e-3)
    assert losses[-1] < losses[0] / 30, (losses[0], losses[-1])
    pred = p.predict_chunk({"obs": obs})
    target = act[:, 1 : 1 + ta]  # the current step (index To-1) onwards
    norm = p.action_normalizer.normalize
    err = (norm(pred) - norm(target)).abs()  # in normalised units ([-1, 1] = data range)
    assert err.mean() < 0.05 and err.max() < 0.2, (err.mean(), err.max())


@pytest.mark.parametrize("chunked,ta", [(True, 2), (False, 1)])
def test_ibc_overfits_tiny_dataset(chunked, ta):
    obs, act = smooth_data(32, 2, ta + 1)
    torch.manual_seed(0)
    p = IBCPolicy(config("ibc", horizon=ta + 1, n_action_steps=ta, chunked=chunked, hidden_dims=[64, 64],
                         n_counter_examples=64, n_samples=256, n_iters=3))
    p.fit_normalizers({"obs": obs.flatten(0, 1), "action": act.flatten(0, 1)})
    losses = fit_steps(p, obs, act, steps=400, lr=3e-3)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first == pytest.approx(math.log(65), abs=0.3)  # chance level of 1-in-65 InfoNCE
    assert last < first / 5, (first, last)
    pred = p.predict_chunk({"obs": obs}, generator=torch.Generator().manual_seed(0))
    norm = p.action_normalizer.normalize
    err = (norm(pred) - norm(act[:, 1 : 1 + ta])).abs()  # in normalised units ([-1, 1] = data range)
    assert err.mean() < 0.08 and torch.quantile(err.flatten(), 0.9) < 0.15, (err.mean(), err.max())


# --- derivative-free optimiser ----------------------------------------------------------------

def test_dfo_finds_minimum_of_known_energy():
    g = torch.Generator().manual_seed(0)
    B, shape = 16, (2, 2)
    target = torch.rand(B, *shape, generator=g) * 1.6 - 0.8

    def energy(a):  # (B, S, 2, 2) → (B, S)
        return ((a - target[:, None]) ** 2).flatten(2).sum(-1)

    kw = dict(n_samples=1024, n_iters=6, noise_scale=0.3, noise_shrink=0.5, temperature=0.02)
    best = dfo_minimize(energy, B, shape, generator=torch.Generator().manual_seed(1), **kw)
    assert best.shape == (B, *shape)
    assert (best - target).flatten(1).norm(dim=-1).max() < 0.05
    # the iterations matter: the best of the initial uniform draw alone is much worse
    init = dfo_minimize(energy, B, shape, generator=torch.Generator().manual_seed(1), **{**kw, "n_iters": 0})
    assert (init - target).flatten(1).norm(dim=-1).mean() > 2 * (best - target).flatten(1).norm(dim=-1).mean()
    # bounds are respected even when the minimum lies outside them
    clipped = dfo_minimize(lambda a: ((a - 3.0) ** 2).sum(-1), 2, (1,), bounds=(-0.5, 0.5), n_samples=64,
                           generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(clipped, torch.full((2, 1), 0.5), atol=1e-3, rtol=0)


def test_dfo_sample_select_and_errors():
    # Two equally deep wells at ±0.6: argmax follows the (here slightly) deeper one; "sample" draws both.
    def wells(a):
        x = a[..., 0]
        return 40 * torch.minimum((x - 0.6) ** 2, (x + 0.6) ** 2 + 0.002)

    noise = torch.randn(400, *dfo_noise_shape((1,), 128, 2), generator=torch.Generator().manual_seed(0))
    arg = dfo_minimize(wells, 400, (1,), n_samples=128, n_iters=2, noise=noise)[:, 0]
    smp = dfo_minimize(wells, 400, (1,), n_samples=128, n_iters=2, noise=noise, select="sample")[:, 0]
    assert (arg - 0.6).abs().lt(0.1).float().mean() > 0.9
    assert (smp - 0.6).abs().lt(0.15).float().mean() > 0.3 and (smp + 0.6).abs().lt(0.15).float().mean() > 0.3
    with pytest.raises(ValueError, match="noise must have shape"):
        dfo_minimize(wells, 400, (1,), n_samples=128, n_iters=3, noise=noise)
    with pytest.raises(ValueError, match="energy_fn must return shape"):
        dfo_minimize(lambda a: a.sum(-1, keepdim=True), 2, (1,), n_samples=8)
    with pytest.raises(ValueError, match="bounds"):
        dfo_minimize(wells, 2, (1,), bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="'argmax' or 'sample'"):
        dfo_minimize(wells, 2, (1,), select="best")


# --- persistence and the agent ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bc", "ibc"])
def test_save_load_round_trip(tmp_path, kind):
    p = fitted(kind, dropout=0.1)
    obs, act = smooth_data(16, 2, 4)
    fit_steps(p, obs, act, steps=3, lr=1e-3)  # weights differ from the seeded init
    d = save_policy(p, tmp_path / "ckpt", extra={"note": kind})
    q, meta = load_policy(d)
    assert type(q) is type(p) and meta["policy_type"] == kind and q.config == p.config and not q.training
    for k, v in p.state_dict().items():
        assert torch.equal(v, q.state_dict()[k]), k
    ob = obs_batch()
    a = p.predict_chunk(ob, generator=torch.Generator().manual_seed(5))
    b = q.predict_chunk(ob, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # through the agent: save / load and deterministic predictions replay exactly
    agent = DiffusionAgent(p, seed=7)
    agent.save(tmp_path / "agent")
    agent2 = DiffusionAgent.load(tmp_path / "agent", seed=7)
    o = np.random.default_rng(0).normal(size=(2, OBS_D)).astype(np.float32)
    x, _ = agent.predict(o, episode_start=np.array([True, True]), deterministic=True)
    y, _ = agent2.predict(o, episode_start=np.array([True, True]), deterministic=True)
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kind", ["bc", "ibc"])
@pytest.mark.parametrize("chunked,ta", [(True, 3), (False, 1)])
def test_agent_replans_every_n_action_steps(kind, chunked, ta):
    """Chunked baselines re-plan every Ta steps; single-step ones (Ta=1) at every step."""
    agent = DiffusionAgent(fitted(kind, chunked=chunked, n_action_steps=ta))
    o = np.random.default_rng(0).normal(size=(2, OBS_D)).astype(np.float32)
    for step in range(6):
        a, _ = agent.predict(o, episode_start=np.array([step == 0] * 2), deterministic=True)
        assert a.shape == (2, A)
    assert agent.n_replans == 6 // ta


# --- training through the CLI config ---------------------------------------------------------

def _toy_episodes(_data_dir=None) -> EpisodeData:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(100, 3)).astype(np.float32)
    action = np.stack([np.tanh(obs[:, 0]), obs[:, 2] * 0.5], axis=-1).astype(np.float32)
    return EpisodeData({"obs": obs, "action": action}, np.arange(1, 6) * 20)


@pytest.mark.parametrize("kind,overrides,ta", [("bc", {}, 8), ("ibc", {"chunked": False, "n_counter_examples": 16}, 1)])
def test_train_baseline_end_to_end(tmp_path, monkeypatch, kind, overrides, ta):
    task = tasks_mod.Task(name="toy", env_id="dp_gym/None-v0", env_kwargs={}, load_dataset=_toy_episodes,
                          obs_keys=("obs",), max_episode_steps=10)
    monkeypatch.setitem(tasks_mod.TASKS, "toy", task)
    cfg = TrainConfig(task="toy", policy=kind, steps=10, batch_size=8, n_action_steps=ta, checkpoint_every=5,
                      val_every=5, log_every=5, out_dir=str(tmp_path / "run"),
                      policy_overrides={"hidden_dims": [16, 16], **overrides})
    policy, meta = load_policy(train(cfg))
    assert meta["policy_type"] == kind and meta["train_step"] == 10
    assert policy.config.horizon == 2 + ta - 1 and policy.config.hidden_dims == [16, 16]
    assert not torch.equal(policy.action_normalizer.scale, torch.ones(A))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10] and all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in rows)
    chunk = policy.predict_chunk({"obs": torch.zeros(2, 2, 3)}, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (2, ta, A) and torch.isfinite(chunk).all()


# --- multimodality ----------------------------------------------------------------------------

def test_multimodal_bc_averages_ibc_keeps_modes():
    """Same observation, demonstrated actions +0.7 or -0.7 (50/50). BC's MSE optimum is the mean,
    ≈ 0, far from both; IBC's energy has wells at both modes, its DFO answer commits to a mode, and
    drawing from its distribution (select="sample") yields both modes."""
    N = 256
    act = torch.where(torch.arange(N) % 2 == 0, 0.7, -0.7).view(N, 1, 1)
    obs = torch.zeros(N, 1, 1)
    # action range [-1, 1] so the modes sit inside the normalised box (not on its edges)
    fit = {"obs": obs.flatten(0, 1), "action": torch.cat([act.flatten(0, 1), torch.tensor([[-1.0], [1.0]])])}
    common = dict(obs_shapes={"obs": [1]}, action_dim=1, horizon=1, n_obs_steps=1, n_action_steps=1, chunked=False)

    torch.manual_seed(0)
    bc = BCPolicy(BCConfig(hidden_dims=[32, 32], **common))
    bc.fit_normalizers(fit)
    fit_steps(bc, obs, act, steps=150, lr=1e-2, bs=64)
    pred = bc.predict_chunk({"obs": torch.zeros(1, 1, 1)}).item()
    assert abs(pred) < 0.15, pred

    torch.manual_seed(0)
    ibc = IBCPolicy(IBCConfig(hidden_dims=[64, 64], n_counter_examples=64, n_samples=256, **common))
    ibc.fit_normalizers(fit)
    # The annealed learning rate matters: at a constant rate the last updates leave one well a few
    # units deeper than the other at random, and p ∝ exp(-E) then favours that mode.
    losses = fit_steps(ibc, obs, act, steps=300, lr=3e-3, bs=64, decay_last=100)
    assert sum(losses[-20:]) < 0.7 * sum(losses[:20])
    with torch.no_grad():
        e = ibc.energy(torch.zeros(1, 1), torch.tensor([-0.7, 0.0, 0.7]).view(1, 3, 1))[0]
    assert e[0] < e[1] - 5 and e[2] < e[1] - 5, e  # both modes far more likely than the mean

    obs200 = {"obs": torch.zeros(200, 1, 1)}

    def fractions(a):
        a = a.flatten()
        return ((a - 0.7).abs() < 0.2).float().mean().item(), ((a + 0.7).abs() < 0.2).float().mean().item(), (a.abs() < 0.3).float().mean().item()

    pos, neg, mid = fractions(ibc.predict_chunk(obs200, generator=torch.Generator().manual_seed(1)))
    assert pos + neg > 0.95 and mid == 0.0, (pos, neg, mid)  # argmax DFO: always a mode, never the mean
    # Drawing from the model's distribution: importance sampling from the uniform candidates
    # (n_iters=0, select="sample") is a sample of p(a|o) ∝ exp(-E(o, a)).
    pos, neg, mid = fractions(ibc.predict_chunk(obs200, generator=torch.Generator().manual_seed(1), select="sample", n_iters=0))
    assert pos >= 0.2 and neg >= 0.2 and mid < 0.05, (pos, neg, mid)
    # with DFO iterations before the draw (they sharpen the distribution), both modes still appear
    pos, neg, mid = fractions(ibc.predict_chunk(obs200, generator=torch.Generator().manual_seed(1), select="sample"))
    assert pos + neg > 0.95 and min(pos, neg) >= 0.1 and mid < 0.05, (pos, neg, mid)
