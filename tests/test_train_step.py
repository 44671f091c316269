"""The training step (fused AdamW, losses kept on the device) follows the plain step's loss curve,
and a non-finite loss is reported with its step."""

from __future__ import annotations

import copy

import pytest
import torch

from dp_gym.ema import EMA
from dp_gym.policies.diffusion.config import DiffusionConfig
from dp_gym.policies.diffusion.policy import DiffusionPolicy
from dp_gym.train import TrainConfig, finite_mean, make_optimizer, make_train_step, _LossModule


def policy_and_batch():
    torch.manual_seed(0)
    p = DiffusionPolicy(DiffusionConfig(obs_shapes={"obs": [4]}, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4,
                                        down_dims=[16, 32], diffusion_step_embed_dim=16))
    g = torch.Generator().manual_seed(1)
    batch = {"obs": torch.randn(16, 8, 4, generator=g), "action": torch.randn(16, 8, 2, generator=g)}
    p.fit_normalizers({"obs": batch["obs"].flatten(0, 1), "action": batch["action"].flatten(0, 1)})
    return p.train(), batch


def test_train_step_follows_the_plain_adamw_loss_curve():
    p, batch = policy_and_batch()
    q = copy.deepcopy(p)
    cfg = TrainConfig(lr=1e-3)
    opt = make_optimizer(p, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = make_train_step(_LossModule(p), p, opt, sched, EMA(p), scaler, None, torch.device("cpu"))
    ref_opt = torch.optim.AdamW(q.optim_groups(), lr=1e-3, betas=(0.95, 0.999), eps=1e-8, foreach=False)
    fast, plain = [], []
    for i in range(15):
        torch.manual_seed(i)
        fast.append(step(batch))
        torch.manual_seed(i)
        loss = q.compute_loss(batch)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        plain.append(float(loss.detach()))
    assert all(not t.requires_grad for t in fast)
    torch.testing.assert_close(torch.stack(fast), torch.tensor(plain), rtol=1e-4, atol=1e-5)
    assert plain[-1] < plain[0]  # it trains
    assert finite_mean(fast, 15) == pytest.approx(sum(plain) / 15, rel=1e-4)


def test_finite_mean_names_the_first_bad_step():
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(float("nan")), torch.tensor(float("inf"))]
    with pytest.raises(FloatingPointError, match="non-finite loss nan at step 12"):
        finite_mean(losses, 14)  # the four losses are steps 10..13
    assert finite_mean(losses[:2], 2) == 1.5
