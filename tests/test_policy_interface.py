"""The policy interface: a policy defined here, registered with the decorator and nothing else,
goes through training, checkpointing, loading, the agent and the benchmark; the decorator refuses
classes that do not implement the interface."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dp_gym import PolicyAgent
from dp_gym import tasks as tasks_mod
from dp_gym.benchmark import BenchmarkConfig, run, with_action_horizon
from dp_gym.checkpoint import load_policy, load_tensors
from dp_gym.policies import registry
from dp_gym.policies.config import PolicyConfig, validate_policy_fields
from dp_gym.policies.policy import Policy, check_obs
from dp_gym.train import TrainConfig, policy_choices, train

pytestmark = pytest.mark.filterwarnings("ignore:--steps .* is below --warmup-steps")


@pytest.fixture
def toy_policy_class(monkeypatch):
    """Registers ``toy_linear`` for one test: the decorator writes into a copy of the registry
    that is put back afterwards, so other tests see only the shipped policies."""
    registry.registered_policies()  # the built-ins are in the copy too
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclass
    class ToyConfig(PolicyConfig):
        obs_shapes: dict[str, list[int]]
        action_dim: int
        horizon: int = 2
        n_obs_steps: int = 1
        n_action_steps: int = 2
        hidden: int = 16
        noise_std: float = 0.1

        def __post_init__(self) -> None:
            validate_policy_fields(self, positive=("hidden",))
            if not self.noise_std >= 0:
                raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    @registry.register_policy("toy_linear")
    class ToyLinearPolicy(Policy):
        """An MLP regressing the Ta actions, plus Gaussian noise of std ``noise_std`` (normalised
        units) when acting: a stochastic policy in a dozen lines."""

        config_class = ToyConfig
        model_sizes = {"small": {"hidden": 8}}
        stochastic = True

        def __init__(self, config: ToyConfig) -> None:
            super().__init__(config)
            c = config
            self.net = nn.Sequential(nn.Linear(c.n_obs_steps * c.obs_feature_dim, c.hidden), nn.ReLU(),
                                     nn.Linear(c.hidden, c.n_action_steps * c.action_dim))

        def _mean(self, obs):
            c = self.config
            return self.net(self.normalized_obs(obs).flatten(1)).view(-1, c.n_action_steps, c.action_dim)

        def compute_loss(self, batch):
            c = self.config
            start = c.n_obs_steps - 1
            target = self.action_normalizer.normalize(batch["action"][:, start : start + c.n_action_steps])
            return F.mse_loss(self._mean({k: batch[k][:, : c.n_obs_steps] for k in c.obs_shapes}), target)

        def noise_shape(self, **sample_kwargs):
            return (self.config.n_action_steps, self.config.action_dim)

        @torch.no_grad()
        def predict_chunk(self, obs, generator=None, noise=None):
            check_obs(obs, self.config.obs_shapes, self.config.n_obs_steps)
            mean = self._mean(obs)
            if noise is None:
                noise = torch.randn(mean.shape, generator=generator)
            return self.action_normalizer.unnormalize(mean + self.config.noise_std * noise.to(mean))

    return ToyLinearPolicy


def test_a_registered_policy_trains_saves_loads_and_benchmarks(toy_policy_class, data_dir, tmp_path, monkeypatch):
    assert "toy_linear" in policy_choices()  # --policy offers it
    # Push-T keypoints with 20-step episodes: the real demonstrations, short rollouts
    task = tasks_mod.TASKS["pusht_keypoints"]
    monkeypatch.setitem(tasks_mod.TASKS, "pusht_keypoints",
                        dataclasses.replace(task, env_kwargs={**task.env_kwargs, "max_episode_steps": 20}))

    ckpt = train(TrainConfig(task="pusht_keypoints", policy="toy_linear", n_obs_steps=1, n_action_steps=2, steps=6,
                             batch_size=8, warmup_steps=0, checkpoint_every=3, log_every=3, val_every=3,
                             data_dir=str(data_dir), out_dir=str(tmp_path / "run")))
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in rows)

    policy, meta = load_policy(ckpt)
    assert type(policy) is toy_policy_class and meta["policy_type"] == "toy_linear" and meta["train_step"] == 6
    # the "small" preset, and the horizon of a policy that does not sample one: To - 1 + Ta
    assert policy.config.hidden == 8 and policy.config.horizon == 2
    saved = load_tensors(ckpt / "model.safetensors")[0]
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in saved.items())
    span = policy.action_normalizer.data_max - policy.action_normalizer.data_min
    assert (span > 100).all()  # fitted on the Push-T actions (pixels), not left at the identity

    # the agent draws the policy's noise_shape per env; deterministic calls replay
    agent = PolicyAgent(policy)
    obs = np.random.default_rng(0).uniform(0, 512, size=(3, 20)).astype(np.float32)
    a1, _ = agent.predict(obs, episode_start=np.ones(3, bool), deterministic=True)
    a2, _ = PolicyAgent(policy).predict(obs, episode_start=np.ones(3, bool), deterministic=True)
    assert a1.shape == (3, 2) and np.array_equal(a1, a2)
    assert agent.accelerator is None  # not accelerable: no accelerator is built for it

    res = run(BenchmarkConfig(task="pusht_keypoints", policies=[f"toy={ckpt}"], seeds="0:2", n_envs=2, videos=0,
                              latency_repeats=0, out_dir=str(tmp_path / "bench")))["toy"]
    assert "error" not in res, res.get("error")
    assert res["episodes"] == 2 and res["per_episode"]["length"] == [20, 20]
    assert res["n_action_steps"] == 2 and res["noise_scale"] is None and res["train_step"] == 6
    # flags for capabilities it lacks are refused, naming the policies that have them
    with pytest.raises(ValueError, match="diffusion policies only"):
        with_action_horizon(policy, 1)
    refused = run(BenchmarkConfig(task="pusht_keypoints", policies=[f"toy={ckpt}"], seeds="0:1", n_envs=1, videos=0,
                                  latency_repeats=0, noise_scale=0.5, out_dir=str(tmp_path / "bench2")))["toy"]
    assert "--noise-scale applies to diffusion policies only" in refused["error"]


def test_register_policy_refuses_what_does_not_implement_the_interface(toy_policy_class):
    with pytest.raises(TypeError, match="decorates Policy subclasses"):
        registry.register_policy("not_a_policy")(nn.Linear)

    class NoLoss(Policy):
        config_class = toy_policy_class.config_class

        def predict_chunk(self, obs, generator=None, **kw):
            return obs

    with pytest.raises(TypeError, match=r"does not implement \['compute_loss'\]"):
        registry.register_policy("no_loss")(NoLoss)

    class NoiseWithoutShape(toy_policy_class):
        noise_shape = Policy.noise_shape

    with pytest.raises(TypeError, match="stochastic = True but does not implement noise_shape"):
        registry.register_policy("noisy")(NoiseWithoutShape)

    class NoConfig(toy_policy_class):
        config_class = dict

    with pytest.raises(TypeError, match="config_class must be a PolicyConfig"):
        registry.register_policy("no_config")(NoConfig)

    with pytest.raises(ValueError, match="already taken"):
        registry.register_policy("diffusion")(toy_policy_class)
    with pytest.raises(ValueError, match="must be an identifier"):
        registry.register_policy("two words")
    with pytest.raises(ValueError, match="unknown policy type 'lstm'; available: .*toy_linear"):
        registry.make_policy("lstm", {})
