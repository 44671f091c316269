"""The per-episode history and action queue (dp_gym.history) shared by DiffusionAgent and the
wrappers, and the wrapper path (ObservationHistory + ActionChunking) against the plain agent path."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import dp_gym  # noqa: F401  (registers dp_gym/PushT-v0)
from dp_gym import DiffusionAgent
from dp_gym.history import ActionQueue, HistoryBuffer
from dp_gym.wrappers import ActionChunking, ObservationHistory
from test_agent import TA, TO, tiny_policy


class RecordActions(gym.Wrapper):
    """Innermost wrapper: the actions the env executed in its current episode."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.executed: list[np.ndarray] = []

    def reset(self, **kwargs):
        self.executed = []
        return self.env.reset(**kwargs)

    def step(self, action):
        self.executed.append(np.array(action, copy=True))
        return self.env.step(action)


def pusht(max_steps: int, **kw) -> gym.Env:
    return RecordActions(gym.make("dp_gym/PushT-v0", obs_type="keypoints", max_episode_steps=max_steps, **kw))


def _recorder(env: gym.Env) -> RecordActions:
    while not isinstance(env, RecordActions):
        env = env.env
    return env


# --- history buffer and action queue --------------------------------------------------------------

def test_history_buffer_pads_rolls_copies_and_stacks_dicts():
    h = HistoryBuffer(3)
    buf = np.array([1.0, 10.0])
    h.push(buf)
    np.testing.assert_array_equal(h.stacked(), [[1, 10]] * 3)  # padded with the first observation
    buf[:] = 2.0  # an env reusing its observation array
    h.push(buf)
    buf[:] = 3.0
    h.push(buf)
    h.push(np.array([4.0, 4.0]))
    np.testing.assert_array_equal(h.stacked()[:, 0], [2, 3, 4])  # oldest dropped, copies kept
    h.clear()
    assert len(h) == 0
    with pytest.raises(RuntimeError, match="empty"):
        h.stacked()
    h.push({"a": np.zeros(2), "img": np.ones((2, 2), np.uint8)})
    h.push({"a": np.ones(2), "img": np.zeros((2, 2), np.uint8)})
    s = h.stacked()
    assert s["a"].shape == (3, 2) and s["img"].shape == (3, 2, 2) and s["img"].dtype == np.uint8
    np.testing.assert_array_equal(s["a"][:, 0], [0, 0, 1])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="integer >= 1"):
            HistoryBuffer(bad)


def test_action_queue_is_fifo_and_drains():
    q = ActionQueue()
    q.fill(np.arange(8.0).reshape(4, 2))
    np.testing.assert_array_equal(q.pop(), [0, 1])
    assert len(q) == 3
    np.testing.assert_array_equal(q.drain(), [[2, 3], [4, 5], [6, 7]])
    assert len(q) == 0
    with pytest.raises(IndexError, match="empty"):
        q.pop()
    q.fill(np.ones((2, 1)))
    q.fill(np.zeros((3, 1)))  # a new chunk replaces what was left
    assert len(q) == 3 and q.pop()[0] == 0


# --- the wrapper path equals the plain agent path -------------------------------------------------

EP_LEN = 20  # not a multiple of Ta = 8: the last chunk is cut after 4 actions


def _plain_single(policy, seed: int) -> np.ndarray:
    env = pusht(EP_LEN)
    agent = DiffusionAgent(policy)
    agent.reset(1)
    agent.set_noise_key(0, seed)  # noise keyed by the episode's seed, not the env slot
    obs, _ = env.reset(seed=seed)
    start, done = True, False
    while not done:
        action, _ = agent.predict(obs, episode_start=np.array([start]), deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action)
        start, done = False, terminated or truncated
    assert agent.n_replans == 3
    return np.stack(env.executed)


def _wrapped_single(policy, seed: int) -> np.ndarray:
    inner = pusht(EP_LEN)
    env = ActionChunking(ObservationHistory(inner, TO), TA)
    agent = DiffusionAgent(policy, env_history=True, return_chunks=True)  # the policy's whole (Ta, A) chunk per call
    agent.reset(1)
    agent.set_noise_key(0, seed)
    obs, _ = env.reset(seed=seed)
    start, done = True, False
    while not done:
        chunk, _ = agent.predict(obs, episode_start=np.array([start]), deterministic=True)
        assert chunk.shape == (TA, 2)
        obs, _, terminated, truncated, info = env.step(chunk)
        start, done = False, terminated or truncated
    assert info["n_steps"] == EP_LEN % TA
    return np.stack(inner.executed)


def test_wrapper_path_executes_the_plain_paths_actions_in_a_single_env():
    policy = tiny_policy()
    for seed in (100000, 100001):
        plain, wrapped = _plain_single(policy, seed), _wrapped_single(policy, seed)
        assert plain.shape == wrapped.shape == (EP_LEN, 2)
        np.testing.assert_array_equal(wrapped, plain)


def test_wrapper_path_executes_the_plain_paths_actions_in_a_vector_env():
    policy, seeds, mode = tiny_policy(), [100000, 100001, 100002], gym.vector.AutoresetMode.DISABLED
    plain_env = gym.vector.SyncVectorEnv([lambda: pusht(EP_LEN)] * 3, autoreset_mode=mode)
    plain_agent = DiffusionAgent(policy)
    plain_agent.reset(3)
    for i, seed in enumerate(seeds):
        plain_agent.set_noise_key(i, seed)
    obs, _ = plain_env.reset(seed=seeds)
    start = np.ones(3, bool)
    for _ in range(EP_LEN):
        actions, _ = plain_agent.predict(obs, episode_start=start, deterministic=True)
        obs, _, terminated, truncated, _ = plain_env.step(actions)
        start[:] = False
    assert (terminated | truncated).all()

    wrapped_env = gym.vector.SyncVectorEnv([lambda: ActionChunking(ObservationHistory(pusht(EP_LEN), TO), TA)] * 3,
                                           autoreset_mode=mode)
    chunk_agent = DiffusionAgent(policy, env_history=True, return_chunks=True)
    chunk_agent.reset(3)
    for i, seed in enumerate(seeds):
        chunk_agent.set_noise_key(i, seed)
    obs, _ = wrapped_env.reset(seed=seeds)
    start = np.ones(3, bool)
    for _ in range(-(-EP_LEN // TA)):
        chunks, _ = chunk_agent.predict(obs, episode_start=start, deterministic=True)
        assert chunks.shape == (3, TA, 2)
        obs, _, terminated, truncated, _ = wrapped_env.step(chunks)
        start[:] = False
    assert (terminated | truncated).all()
    for i in range(3):
        plain = np.stack(_recorder(plain_env.envs[i]).executed)
        wrapped = np.stack(_recorder(wrapped_env.envs[i]).executed)
        assert plain.shape == wrapped.shape == (EP_LEN, 2)
        np.testing.assert_array_equal(wrapped, plain, err_msg=f"env {i}")
    # and each env's actions are those it gets alone (up to batch-size rounding)
    np.testing.assert_allclose(np.stack(_recorder(plain_env.envs[1]).executed), _plain_single(policy, 100001), rtol=0, atol=1e-2)
