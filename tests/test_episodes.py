"""The rollout loop (dp_gym.episodes): one episode per seed or n episodes, any autoreset mode,
callbacks, frame recording, the per-episode noise key."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import dp_gym  # noqa: F401  (registers dp_gym/PushT-v0)
from dp_gym import DiffusionAgent
from dp_gym.episodes import FrameRecorder, RolloutCallback, episode_noise_key, rollout, run_episodes
from test_agent import tiny_policy
from test_history import pusht


# --- the rollout loop -----------------------------------------------------------------------------

class Events(RolloutCallback):
    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple] = []
        self.predicts = 0

    def on_episode_start(self, episode):
        assert episode.length == 0
        self.log.append(("start", episode.index, episode.env_index))

    def on_step(self, episode, step):
        assert episode.length == len(episode.actions) and np.array_equal(episode.actions[-1], step.action)
        self.log.append(("step", episode.index, episode.length))

    def on_episode_end(self, episode):
        assert isinstance(episode.actions, np.ndarray) and "coverage" in episode.info
        self.log.append(("end", episode.index, episode.length))

    def on_predict(self, seconds):
        assert seconds >= 0
        self.predicts += 1


def test_rollout_runs_one_episode_per_seed_with_callbacks():
    policy, seeds, n = tiny_policy(), [100000, 100001, 100002], 6
    vec = gym.vector.SyncVectorEnv([lambda: pusht(n)] * 2, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    events = Events()
    episodes = rollout(DiffusionAgent(policy), vec, seeds, callbacks=[events])
    assert sorted(e.index for e in episodes) == [0, 1, 2] and [e.seed for e in sorted(episodes, key=lambda e: e.index)] == seeds
    assert all(e.length == n and e.actions.shape == (n, 2) and e.noise_key == e.seed for e in episodes)
    # seed 2 starts in the env that finished first, after seeds 0 and 1 ended
    assert events.log[:2] == [("start", 0, 0), ("start", 1, 1)]
    for i in range(3):
        mine = [ev for ev in events.log if ev[1] == i]
        assert mine == [("start", i, mine[0][2])] + [("step", i, t) for t in range(1, n + 1)] + [("end", i, n)]
    assert events.log.index(("start", 2, 0)) > events.log.index(("end", 0, n))
    assert events.predicts == 2 * n  # the last seed's env runs alone while the other idles
    # the same seeds one after another on a plain env: the same actions (up to batch-size rounding)
    plain = {e.seed: e for e in rollout(DiffusionAgent(policy), pusht(n), seeds)}
    for e in episodes:
        np.testing.assert_allclose(plain[e.seed].actions, e.actions, rtol=0, atol=1e-2)


def test_rollout_leaves_a_plain_env_in_its_last_episodes_final_state():
    env = pusht(7)
    rollout(DiffusionAgent(tiny_policy()), env, [100000, 100001])
    assert len(env.executed) == 7  # no reset after the last episode (tools read the final state)


def test_rollout_refuses_envs_that_reset_without_the_next_seed():
    vec = gym.vector.SyncVectorEnv([lambda: pusht(5)] * 2)  # NEXT_STEP
    with pytest.raises(ValueError, match="autoreset_mode=DISABLED"):
        rollout(DiffusionAgent(tiny_policy()), vec, [1, 2, 3])
    with pytest.raises(ValueError, match="at least one"):
        rollout(DiffusionAgent(tiny_policy()), pusht(5), [])
    with pytest.raises(TypeError, match="RolloutCallback"):
        rollout(DiffusionAgent(tiny_policy()), pusht(5), [1], callbacks=[lambda ep: None])
    with pytest.raises(TypeError, match="on_step must be callable"):
        RolloutCallback(on_step=3)


def test_run_episodes_calls_callbacks_in_every_autoreset_mode():
    for mode in gym.vector.AutoresetMode:
        vec = gym.vector.SyncVectorEnv([lambda: pusht(4), lambda: pusht(3)], autoreset_mode=mode)
        events = Events()
        episodes = run_episodes(DiffusionAgent(tiny_policy()), vec, n_episodes=4, seed=7, callbacks=[events])
        ends = [ev for ev in events.log if ev[0] == "end"]
        assert len(ends) >= 4 and [(e.index, e.length) for e in episodes] == [ev[1:] for ev in ends][:4], mode
        assert all(len([ev for ev in events.log if ev[0] == "step" and ev[1] == e.index]) >= e.length for e in episodes)


def test_episode_noise_key_is_the_seed_sequence_child_of_the_seed():
    for seed, index in ((100000, 0), (100000, 3), (7, 1)):
        child = np.random.SeedSequence(seed).spawn(index + 1)[index]
        assert episode_noise_key(seed, 5, index) == int(child.generate_state(1, dtype=np.uint32)[0]) >> 1
    keys = {episode_noise_key(100000, 0, k) for k in range(50)} | {episode_noise_key(100001, 0, k) for k in range(50)}
    assert len(keys) == 100 and all(0 <= k < 2**31 for k in keys)
    assert episode_noise_key(None, 3, 2) == episode_noise_key(3, 0, 2)  # an unseeded env's index stands in for its seed
    with pytest.raises(ValueError, match="non-negative"):
        episode_noise_key(-1, 0, 0)


def test_frame_recorder_takes_the_reset_frame_and_one_per_step_of_selected_episodes():
    n, written = 5, {}
    vec = gym.vector.SyncVectorEnv([lambda: pusht(n, render_mode="rgb_array")] * 2,
                                   autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    rec = FrameRecorder(vec, select=lambda e: e.index != 1, write=lambda e, frames: written.setdefault(e.seed, frames))
    rollout(DiffusionAgent(tiny_policy()), vec, [10, 11, 12], callbacks=[rec])
    assert sorted(written) == [10, 12]  # seed 12 starts mid-run, in the env seed 10 ran in
    for frames in written.values():
        assert len(frames) == n + 1 and frames[0].ndim == 3 and frames[0].dtype == np.uint8
        assert not np.array_equal(frames[0], frames[-1])
    assert not np.array_equal(written[10][0], written[12][0])  # each episode's own reset frame
