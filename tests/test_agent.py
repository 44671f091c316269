"""DiffusionAgent: SB3-style predict, per-env queues, episode_start, determinism, persistence."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import dp_gym  # noqa: F401  (registers dp_gym/PushT-v0)
from dp_gym import DiffusionAgent
from dp_gym.policies import make_policy
from dp_gym.wrappers import ActionChunking, ObservationHistory

OBS_DIM, ACT_DIM, TO, TA = 20, 2, 2, 8


def tiny_policy(obs_shapes=None, **kw) -> torch.nn.Module:
    cfg = dict(obs_shapes=obs_shapes or {"obs": [OBS_DIM]}, action_dim=ACT_DIM, horizon=16, n_obs_steps=TO,
               n_action_steps=TA, down_dims=[16, 32], diffusion_step_embed_dim=16, sampler="ddim", num_inference_steps=4)
    cfg.update(kw)
    policy = make_policy("diffusion", cfg)
    # Normalisers fitted to Push-T-like ranges so actions come out in env units.
    data = {k: torch.rand(100, s[0]) * 512 for k, s in policy.config.obs_shapes.items()}
    data["action"] = torch.rand(100, ACT_DIM) * 512
    policy.fit_normalizers(data)
    return policy.eval()


def obs_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 512, size=(n, OBS_DIM)).astype(np.float32)


def test_single_and_batched_shapes():
    agent = DiffusionAgent(tiny_policy())
    a, state = agent.predict(obs_batch(1)[0], episode_start=np.array([True]))
    assert a.shape == (ACT_DIM,) and state is None
    agent2 = DiffusionAgent(tiny_policy())
    a, _ = agent2.predict(obs_batch(3))
    assert a.shape == (3, ACT_DIM) and a.dtype == np.float32


def test_replans_only_when_queue_empty_and_on_episode_start():
    agent = DiffusionAgent(tiny_policy())
    obs = obs_batch(2)
    agent.predict(obs, episode_start=np.array([True, True]))
    assert agent.n_replans == 1
    for _ in range(TA - 1):
        agent.predict(obs, episode_start=np.array([False, False]))
    assert agent.n_replans == 1, "no re-plan while both queues still hold actions"
    agent.predict(obs, episode_start=np.array([False, False]))
    assert agent.n_replans == 2
    # env 1 starts a new episode: only it re-plans, env 0 keeps consuming its queue
    agent.predict(obs, episode_start=np.array([False, True]))
    assert agent.n_replans == 3
    assert len(agent._queues[0]) == TA - 2 and len(agent._queues[1]) == TA - 1


def test_history_padding_and_rolling():
    agent = DiffusionAgent(tiny_policy())
    o1, o2 = obs_batch(1, 1), obs_batch(1, 2)
    agent.predict(o1, episode_start=np.array([True]))
    hist = agent._histories[0].stacked()["obs"]
    np.testing.assert_array_equal(hist, np.repeat(o1, TO, axis=0))  # padded with the first obs
    agent.predict(o2)
    hist = agent._histories[0].stacked()["obs"]
    np.testing.assert_array_equal(hist, np.concatenate([o1, o2]))


def test_deterministic_reproducible_and_batch_independent():
    policy = tiny_policy()
    obs = obs_batch(3)
    a1, _ = DiffusionAgent(policy).predict(obs, deterministic=True)
    a2, _ = DiffusionAgent(policy).predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    # env 0's actions do not depend on which other envs share its batch
    solo, _ = DiffusionAgent(policy).predict(obs[:1], deterministic=True)
    np.testing.assert_allclose(solo, a1[:1], rtol=1e-4, atol=1e-3)
    # stochastic calls differ between agents with different seeds
    s1, _ = DiffusionAgent(policy, seed=1).predict(obs)
    s2, _ = DiffusionAgent(policy, seed=2).predict(obs)
    assert not np.allclose(s1, s2)


def test_save_load_identical_predictions(tmp_path):
    agent = DiffusionAgent(tiny_policy(sampler="ddpm", num_inference_steps=5))
    agent.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = DiffusionAgent.load(tmp_path / "ckpt", device="cpu")
    obs = obs_batch(2)
    a, _ = agent.predict(obs, deterministic=True)
    b, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a, b)


def test_repr_names_policy_shapes_horizons_and_effective_sampler():
    agent = DiffusionAgent(tiny_policy())
    assert repr(agent) == ("PolicyAgent(policy='diffusion', obs={'obs': (20,)}, action_dim=2, n_obs_steps=2, "
                           "n_action_steps=8, sampler={'sampler': 'ddim', 'num_inference_steps': 4}, device='cpu')")
    agent.sample_kwargs.update(sampler="ddpm", num_inference_steps=100)  # what predict will use
    assert "sampler={'sampler': 'ddpm', 'num_inference_steps': 100}" in repr(agent)


def test_bad_observations_raise_clear_errors():
    agent = DiffusionAgent(tiny_policy())
    with pytest.raises(ValueError, match=r"expected \(20,\)"):
        agent.predict(np.zeros(19, np.float32))
    bad = obs_batch(1)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        agent.predict(bad)
    with pytest.raises(ValueError, match="episode_start"):
        agent.predict(obs_batch(2), episode_start=np.array([True]))
    for not_numbers in ("hello", np.array(["a"] * 20), [None] * 20):  # named as a type error, not a shape one
        with pytest.raises(TypeError, match="expected a numeric array"):
            agent.predict(not_numbers)
    dict_agent = DiffusionAgent(tiny_policy(obs_shapes={"a": [3], "b": [4]}))
    with pytest.raises(KeyError, match="missing keys"):
        dict_agent.predict({"a": np.zeros(3, np.float32)})
    with pytest.raises(TypeError, match="dict observation"):
        dict_agent.predict(np.zeros(7, np.float32))


def test_absurd_observation_empty_batch_and_changing_batch_size_raise():
    agent = DiffusionAgent(tiny_policy())
    huge = np.full((1, OBS_DIM), 1e38, np.float32)
    with pytest.raises(ValueError, match="far outside the training data's range"):
        agent.predict(huge, episode_start=np.array([True]))
    agent.predict(np.full((1, OBS_DIM), 600.0, np.float32), episode_start=np.array([True]))  # a little outside: planned
    with pytest.raises(ValueError, match="batch is empty"):
        agent.predict(np.zeros((0, OBS_DIM), np.float32))
    agent = DiffusionAgent(tiny_policy())
    agent.predict(obs_batch(3), episode_start=np.ones(3, bool))
    queued = [len(q) for q in agent._queues]
    with pytest.raises(ValueError, match="batch has 2 envs but the agent tracks 3"):
        agent.predict(obs_batch(2))
    assert [len(q) for q in agent._queues] == queued, "a refused call leaves the agent's state alone"
    a, _ = agent.predict(obs_batch(2), episode_start=np.ones(2, bool))  # new episodes everywhere: allowed
    assert a.shape == (2, ACT_DIM)
    agent.reset(4)
    assert agent.predict(obs_batch(4))[0].shape == (4, ACT_DIM)


def test_dict_observations():
    agent = DiffusionAgent(tiny_policy(obs_shapes={"a": [3], "b": [4]}))
    a, _ = agent.predict({"a": np.ones((2, 3), np.float32), "b": np.ones((2, 4), np.float32), "ignored": np.zeros(2)})
    assert a.shape == (2, ACT_DIM)


def test_plain_env_episode():
    env = gym.make("dp_gym/PushT-v0", obs_type="keypoints", max_episode_steps=20)
    agent = DiffusionAgent(tiny_policy())
    obs, _ = env.reset(seed=100000)
    start, steps, done = True, 0, False
    while not done:
        action, _ = agent.predict(obs, episode_start=np.array([start]))
        start = False
        obs, _, term, trunc, info = env.step(action)
        done = term or trunc
        steps += 1
    assert steps == 20 and "coverage" in info
    assert agent.n_replans == 3  # ceil(20 / 8)


def test_wrapped_vector_env_with_chunks():
    def make():
        env = gym.make("dp_gym/PushT-v0", obs_type="keypoints", max_episode_steps=24)
        return ActionChunking(ObservationHistory(env, TO), TA)

    vec = gym.vector.SyncVectorEnv([make, make])
    agent = DiffusionAgent(tiny_policy(), env_history=True, return_chunks=True)
    obs, _ = vec.reset(seed=[100000, 100001])
    assert obs.shape == (2, TO, OBS_DIM)
    for _ in range(3):
        chunk, _ = agent.predict(obs)
        assert chunk.shape == (2, TA, ACT_DIM)
        obs, reward, term, trunc, info = vec.step(chunk)
    assert trunc.all() and (info["n_steps"] == TA).all()


def test_sb3_evaluate_policy_on_vec_env():
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    vec = make_vec_env("dp_gym/PushT-v0", n_envs=2, env_kwargs={"obs_type": "keypoints", "max_episode_steps": 12})
    agent = DiffusionAgent(tiny_policy())
    rewards, lengths = evaluate_policy(agent, vec, n_eval_episodes=4, deterministic=True, return_episode_rewards=True)
    assert len(rewards) == 4 and lengths == [12, 12, 12, 12]
    # each episode re-planned from scratch: ceil(12/8)=2 chunks per env per episode, batched over envs
    assert agent.n_replans >= 4
    vec.close()


# --- episodes on vector envs in every autoreset mode ------------------------------------------

def _episode_alone(policy, seed, max_steps, index):
    """Episode ``index`` of a single env first reset with ``seed``, driven by hand (the reference)."""
    from dp_gym.episodes import episode_noise_key

    env = gym.make("dp_gym/PushT-v0", obs_type="keypoints", max_episode_steps=max_steps)
    agent = DiffusionAgent(policy)
    agent.reset(1)
    for k in range(index + 1):
        obs, _ = env.reset(seed=seed if k == 0 else None)
        agent.set_noise_key(0, episode_noise_key(seed, 0, k))
        actions, start, done = [], True, False
        while not done:
            a, _ = agent.predict(obs, episode_start=np.array([start]), deterministic=True)
            obs, _, term, trunc, _ = env.step(a)
            actions.append(a)
            start, done = False, term or trunc
    return np.asarray(actions)


@pytest.mark.parametrize("mode", ["NEXT_STEP", "SAME_STEP", "DISABLED"])
def test_run_episodes_gives_each_episode_its_actions_alone_in_every_autoreset_mode(mode):
    from dp_gym.episodes import run_episodes

    policy = tiny_policy()
    lengths = [11, 6]  # episodes end out of step, and mid-chunk (Ta = 8)
    fns = [lambda n=n: gym.make("dp_gym/PushT-v0", obs_type="keypoints", max_episode_steps=n) for n in lengths]
    vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode[mode])
    agent = DiffusionAgent(policy)
    episodes = run_episodes(agent, vec, n_episodes=5, seed=[100000, 100001])
    assert [(e.env_index, e.index) for e in episodes] == [(1, 0), (0, 0), (1, 1), (1, 2), (0, 1)]
    for e in episodes:
        assert e.length == lengths[e.env_index] and e.seed == 100000 + e.env_index
        assert "coverage" in e.info and e.max_reward >= 0
        alone = _episode_alone(policy, e.seed, lengths[e.env_index], e.index)
        # equal up to float rounding (a batch of 2 runs other kernels than a batch of 1); a chunk
        # planned from another episode's observations would differ by tens of pixels
        np.testing.assert_allclose(e.actions, alone, rtol=0, atol=1e-2, err_msg=f"{mode}: env {e.env_index} episode {e.index}")
    # a plain env through the same helper
    plain = run_episodes(DiffusionAgent(policy), gym.make("dp_gym/PushT-v0", obs_type="keypoints", max_episode_steps=6),
                         n_episodes=2, seed=100001)
    np.testing.assert_array_equal(plain[1].actions, _episode_alone(policy, 100001, 6, 1))
