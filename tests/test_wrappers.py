"""Tests for dp_gym.wrappers: ObservationHistory, ActionChunking, RecordEpisodeVideo."""

from __future__ import annotations

import functools
import os

import gymnasium as gym
import imageio.v2 as iio2
import imageio.v3 as iio3
import numpy as np
import pytest
from gymnasium import spaces

from dp_gym.wrappers import ActionChunking, ObservationHistory, RecordEpisodeVideo

FRAME_H, FRAME_W = 15, 21  # odd on purpose: mp4 needs padding to even sizes


class PointEnv(gym.Env):
    """Deterministic 1-D point: ``position += action``; reward = new position.

    Terminates when position > ``threshold``, truncates after ``max_steps`` steps. ``render``
    returns a small frame whose colour changes every step, so consecutive frames differ.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 7}

    def __init__(self, threshold=2.5, max_steps=50, dict_obs=False, render_mode=None, reuse_buffer=False):
        self.threshold = threshold
        self.max_steps = max_steps
        self.dict_obs = dict_obs
        self.render_mode = render_mode
        self.reuse_buffer = reuse_buffer
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        pos_space = spaces.Box(-100.0, 100.0, shape=(1,), dtype=np.float32)
        if dict_obs:
            self.observation_space = spaces.Dict(
                {"pos": pos_space, "t": spaces.Box(0, 1000, shape=(2,), dtype=np.int64)}
            )
        else:
            self.observation_space = pos_space
        self.position = 0.0
        self.t = 0
        self.actions: list[float] = []
        self._buf = np.zeros(1, dtype=np.float32)

    def _obs(self):
        if self.reuse_buffer:  # worst case for a history wrapper: same array object mutated in place
            self._buf[0] = self.position
            pos = self._buf
        else:
            pos = np.array([self.position], dtype=np.float32)
        if self.dict_obs:
            return {"pos": pos, "t": np.array([self.t, 2 * self.t], dtype=np.int64)}
        return pos

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = float((options or {}).get("start", 0.0))
        self.t = 0
        self.actions = []
        return self._obs(), {"position": self.position}

    def step(self, action):
        a = float(np.asarray(action).reshape(-1)[0])
        self.actions.append(a)
        self.position += a
        self.t += 1
        terminated = self.position > self.threshold
        truncated = (not terminated) and self.t >= self.max_steps
        return self._obs(), float(self.position), terminated, truncated, {"position": self.position}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        frame = np.zeros((FRAME_H, FRAME_W, 3), dtype=np.uint8)
        frame[..., 0] = (40 * self.t) % 256
        frame[..., 1] = 255 - (25 * self.t) % 256
        frame[..., 2] = 100
        col = int(np.clip(self.position * 3 + FRAME_W // 2, 0, FRAME_W - 1))
        frame[:, col] = 255
        return frame


def _chunk(*values):
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)


# --------------------------------------------------------------------------- ObservationHistory
class TestObservationHistory:
    def test_box_space_stacked_with_tiled_bounds_and_dtype(self):
        env = ObservationHistory(PointEnv(), n_obs_steps=3)
        space = env.observation_space
        assert isinstance(space, spaces.Box)
        assert space.shape == (3, 1)
        assert space.dtype == np.float32
        np.testing.assert_array_equal(space.low, np.full((3, 1), -100.0, np.float32))
        np.testing.assert_array_equal(space.high, np.full((3, 1), 100.0, np.float32))

    def test_reset_pads_with_first_observation(self):
        env = ObservationHistory(PointEnv(), n_obs_steps=4)
        obs, info = env.reset(options={"start": 0.3})
        assert obs.shape == (4, 1) and obs.dtype == np.float32
        np.testing.assert_allclose(obs, np.full((4, 1), 0.3, np.float32))
        assert info == {"position": 0.3}
        assert env.observation_space.contains(obs)

    def test_history_rolls_after_steps(self):
        env = ObservationHistory(PointEnv(threshold=100), n_obs_steps=3)
        env.reset(options={"start": 0.25})
        obs, reward, terminated, truncated, info = env.step(np.array([1.0], np.float32))
        np.testing.assert_allclose(obs[:, 0], [0.25, 0.25, 1.25])
        assert reward == pytest.approx(1.25) and not terminated and not truncated
        obs, *_ = env.step(np.array([0.5], np.float32))
        np.testing.assert_allclose(obs[:, 0], [0.25, 1.25, 1.75])
        obs, *_ = env.step(np.array([-1.0], np.float32))
        np.testing.assert_allclose(obs[:, 0], [1.25, 1.75, 0.75])
        obs, *_ = env.step(np.array([0.0], np.float32))
        np.testing.assert_allclose(obs[:, 0], [1.75, 0.75, 0.75])

    def test_reset_clears_previous_history(self):
        env = ObservationHistory(PointEnv(threshold=100), n_obs_steps=2)
        env.reset()
        env.step(np.array([1.0], np.float32))
        obs, _ = env.reset(options={"start": -0.5})
        np.testing.assert_allclose(obs[:, 0], [-0.5, -0.5])

    def test_history_copies_observations_mutated_in_place(self):
        env = ObservationHistory(PointEnv(threshold=100, reuse_buffer=True), n_obs_steps=3)
        first, _ = env.reset()
        obs, *_ = env.step(np.array([1.0], np.float32))
        obs, *_ = env.step(np.array([1.0], np.float32))
        np.testing.assert_allclose(obs[:, 0], [0.0, 1.0, 2.0])
        np.testing.assert_allclose(first[:, 0], [0.0, 0.0, 0.0])  # earlier returns untouched

    def test_n_obs_steps_one_keeps_a_leading_axis(self):
        env = ObservationHistory(PointEnv(), n_obs_steps=1)
        obs, _ = env.reset(options={"start": 1.0})
        assert env.observation_space.shape == (1, 1)
        np.testing.assert_allclose(obs, [[1.0]])

    def test_dict_observations_stacked_per_key(self):
        env = ObservationHistory(PointEnv(dict_obs=True, threshold=100), n_obs_steps=2)
        space = env.observation_space
        assert isinstance(space, spaces.Dict) and set(space.spaces) == {"pos", "t"}
        assert space["pos"].shape == (2, 1) and space["pos"].dtype == np.float32
        assert space["t"].shape == (2, 2) and space["t"].dtype == np.int64
        np.testing.assert_array_equal(space["t"].high, np.full((2, 2), 1000))

        obs, _ = env.reset(options={"start": 0.5})
        np.testing.assert_allclose(obs["pos"][:, 0], [0.5, 0.5])
        np.testing.assert_array_equal(obs["t"], [[0, 0], [0, 0]])
        assert space.contains(obs)
        obs, *_ = env.step(np.array([1.0], np.float32))
        np.testing.assert_allclose(obs["pos"][:, 0], [0.5, 1.5])
        np.testing.assert_array_equal(obs["t"], [[0, 0], [1, 2]])
        assert obs["t"].dtype == np.int64 and obs["pos"].dtype == np.float32
        assert space.contains(obs)

    @pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
    def test_rejects_bad_n_obs_steps(self, bad):
        with pytest.raises(ValueError, match="n_obs_steps must be an integer >= 1"):
            ObservationHistory(PointEnv(), n_obs_steps=bad)

    def test_rejects_unsupported_spaces(self):
        env = PointEnv()
        env.observation_space = spaces.Discrete(5)
        with pytest.raises(TypeError, match="Box or a Dict of Box.*Discrete"):
            ObservationHistory(env, 2)
        env = PointEnv()
        env.observation_space = spaces.Dict({"pos": spaces.Box(0, 1, (1,)), "mode": spaces.Discrete(3)})
        with pytest.raises(TypeError, match="key 'mode' is Discrete"):
            ObservationHistory(env, 2)

    def test_step_before_reset_raises(self):
        env = ObservationHistory(PointEnv(), n_obs_steps=2)
        with pytest.raises(gym.error.ResetNeeded):
            env.step(np.array([0.0], np.float32))

    @pytest.mark.parametrize("dict_obs", [False, True])
    def test_matches_gymnasium_frame_stack_observation_with_reset_padding(self, dict_obs):
        from gymnasium.wrappers import FrameStackObservation

        ours = ObservationHistory(PointEnv(threshold=100, dict_obs=dict_obs), n_obs_steps=3)
        ref = FrameStackObservation(PointEnv(threshold=100, dict_obs=dict_obs), 3, padding_type="reset")
        assert ours.observation_space == ref.observation_space

        def same(a, b):
            for k in (a if dict_obs else [None]):
                x, y = (a[k], b[k]) if dict_obs else (a, b)
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)

        for start in (0.5, -1.0):  # a second reset starts a new history in both
            same(ours.reset(options={"start": start})[0], ref.reset(options={"start": start})[0])
            for a in (1.0, 0.5, -0.25, 2.0):
                same(ours.step(np.array([a], np.float32))[0], ref.step(np.array([a], np.float32))[0])


# --------------------------------------------------------------------------- ActionChunking
class TestActionChunking:
    def test_action_space_tiled(self):
        env = ActionChunking(PointEnv(), n_action_steps=8)
        space = env.action_space
        assert isinstance(space, spaces.Box) and space.shape == (8, 1) and space.dtype == np.float32
        np.testing.assert_array_equal(space.low, -np.ones((8, 1), np.float32))
        np.testing.assert_array_equal(space.high, np.ones((8, 1), np.float32))
        assert env.observation_space == PointEnv().observation_space

    def test_runs_exactly_ta_steps_in_order(self):
        env = ActionChunking(PointEnv(threshold=100), n_action_steps=4)
        env.reset()
        chunk = _chunk(1.0, 0.5, -1.0, 0.25)
        obs, reward, terminated, truncated, info = env.step(chunk)
        inner = env.unwrapped
        assert inner.t == 4
        assert inner.actions == [1.0, 0.5, -1.0, 0.25]
        np.testing.assert_allclose(obs, [0.75])
        assert info["n_steps"] == 4
        assert info["rewards"] == pytest.approx([1.0, 1.5, 0.5, 0.75])
        assert reward == pytest.approx(1.5)  # max by default
        assert info["position"] == pytest.approx(0.75)  # last inner info kept
        assert not terminated and not truncated

    def test_sum_aggregation(self):
        env = ActionChunking(PointEnv(threshold=100), n_action_steps=4, reward_aggregation="sum")
        env.reset()
        _, reward, *_ , info = env.step(_chunk(1.0, 0.5, -1.0, 0.25))
        assert reward == pytest.approx(1.0 + 1.5 + 0.5 + 0.75)
        assert isinstance(reward, float)

    @pytest.mark.parametrize("aggregation, expected", [("max", 3.0), ("sum", 6.0)])
    def test_stops_early_on_termination(self, aggregation, expected):
        env = ActionChunking(PointEnv(threshold=2.5), n_action_steps=5, reward_aggregation=aggregation)
        env.reset()
        obs, reward, terminated, truncated, info = env.step(_chunk(1, 1, 1, -1, -1))
        assert terminated and not truncated
        assert env.unwrapped.t == 3 and env.unwrapped.actions == [1.0, 1.0, 1.0]
        assert info["n_steps"] == 3
        assert info["rewards"] == pytest.approx([1.0, 2.0, 3.0])
        assert reward == pytest.approx(expected)
        np.testing.assert_allclose(obs, [3.0])

    def test_stops_early_on_truncation(self):
        env = ActionChunking(PointEnv(threshold=100, max_steps=5), n_action_steps=4)
        env.reset()
        *_, terminated, truncated, info = env.step(_chunk(0.1, 0.1, 0.1, 0.1))
        assert not truncated and info["n_steps"] == 4
        *_, terminated, truncated, info = env.step(_chunk(0.1, 0.1, 0.1, 0.1))
        assert truncated and not terminated
        assert info["n_steps"] == 1 and len(info["rewards"]) == 1
        assert env.unwrapped.t == 5

    @pytest.mark.parametrize(
        "chunk",
        [np.zeros((5, 1)), np.zeros((4,)), np.zeros((4, 2)), np.zeros((1, 4, 1)), 0.0],
    )
    def test_rejects_wrong_shape(self, chunk):
        env = ActionChunking(PointEnv(), n_action_steps=4)
        env.reset()
        with pytest.raises(ValueError, match=r"shape \(4, 1\).*got"):
            env.step(chunk)
        assert env.unwrapped.t == 0  # nothing executed

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_rejects_non_finite(self, bad):
        env = ActionChunking(PointEnv(), n_action_steps=4)
        env.reset()
        chunk = _chunk(0.1, 0.2, bad, 0.3)
        with pytest.raises(ValueError, match=r"NaN or inf.*index \(2, 0\)"):
            env.step(chunk)
        assert env.unwrapped.t == 0

    def test_accepts_lists_and_casts_dtype(self):
        env = ActionChunking(PointEnv(threshold=100), n_action_steps=2)
        env.reset()
        _, _, _, _, info = env.step([[0.5], [0.5]])
        assert info["n_steps"] == 2
        _, _, _, _, info = env.step(np.full((2, 1), 0.5, dtype=np.float64))
        assert env.unwrapped.position == pytest.approx(2.0)

    def test_rejects_bad_arguments(self):
        with pytest.raises(ValueError, match="reward_aggregation must be one of"):
            ActionChunking(PointEnv(), 4, reward_aggregation="mean")
        with pytest.raises(ValueError, match="n_action_steps must be an integer >= 1"):
            ActionChunking(PointEnv(), 0)
        env = PointEnv()
        env.action_space = spaces.Discrete(3)
        with pytest.raises(TypeError, match="Box action space.*Discrete"):
            ActionChunking(env, 4)

    def test_stack_with_observation_history(self):
        env = ActionChunking(ObservationHistory(PointEnv(threshold=100), 2), 3)
        assert env.observation_space.shape == (2, 1) and env.action_space.shape == (3, 1)
        obs, _ = env.reset()
        np.testing.assert_allclose(obs[:, 0], [0.0, 0.0])
        obs, reward, *_ , info = env.step(_chunk(1.0, 0.5, 0.25))
        np.testing.assert_allclose(obs[:, 0], [1.5, 1.75])  # last two inner observations
        assert info["n_steps"] == 3 and reward == pytest.approx(1.75)


# --------------------------------------------------------------------------- RecordEpisodeVideo
def _run_episode(env, actions):
    env.reset()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(np.array([a], np.float32))
        if terminated or truncated:
            return True
    return False


class TestRecordEpisodeVideo:
    def test_gif_written_on_termination_with_all_frames(self, tmp_path):
        env = RecordEpisodeVideo(PointEnv(threshold=2.5, render_mode="rgb_array"), tmp_path, format="gif")
        assert env.fps == 7  # from metadata["render_fps"]
        assert _run_episode(env, [1.0, 1.0, 1.0])  # terminates on the 3rd step
        path = str(tmp_path / "episode-0.gif")
        assert env.video_paths == [path]
        assert os.listdir(tmp_path) == ["episode-0.gif"]  # no temporary files left
        frames = iio3.imread(path, index=None)
        assert frames.shape == (4, FRAME_H, FRAME_W, 3)  # reset + 3 steps
        env.close()
        assert env.video_paths == [path]  # nothing pending, nothing rewritten

    def test_mp4_readable_with_odd_frame_size(self, tmp_path):
        env = RecordEpisodeVideo(PointEnv(threshold=2.5, render_mode="rgb_array"), tmp_path, fps=5)
        assert _run_episode(env, [1.0, 1.0, 1.0])
        (path,) = env.video_paths
        assert path.endswith("episode-0.mp4") and os.path.getsize(path) > 0
        with iio2.get_reader(path, format="FFMPEG") as reader:
            frames = [f for f in reader]
            assert reader.get_meta_data()["fps"] == pytest.approx(5)
        assert len(frames) == 4
        assert frames[0].shape == (FRAME_H + 1, FRAME_W + 1, 3)  # padded to even sizes
        env.close()

    def test_episode_trigger_and_prefix(self, tmp_path):
        env = RecordEpisodeVideo(
            PointEnv(threshold=1.5, render_mode="rgb_array"),
            tmp_path,
            episode_trigger=lambda i: i % 2 == 0,
            name_prefix="eval",
            format="gif",
        )
        for _ in range(3):
            assert _run_episode(env, [1.0, 1.0])
        assert [os.path.basename(p) for p in env.video_paths] == ["eval-0.gif", "eval-2.gif"]
        assert sorted(os.listdir(tmp_path)) == ["eval-0.gif", "eval-2.gif"]

    def test_close_and_reset_flush_unfinished_episode(self, tmp_path):
        env = RecordEpisodeVideo(PointEnv(threshold=100, render_mode="rgb_array"), tmp_path, format="gif")
        assert not _run_episode(env, [0.5])  # unfinished: reset + 1 step
        env.reset()  # mid-episode reset writes episode 0
        assert [os.path.basename(p) for p in env.video_paths] == ["episode-0.gif"]
        assert iio3.imread(env.video_paths[0], index=None).shape[0] == 2
        env.step(np.array([0.5], np.float32))
        env.step(np.array([0.5], np.float32))
        env.close()  # writes episode 1
        assert [os.path.basename(p) for p in env.video_paths] == ["episode-0.gif", "episode-1.gif"]
        assert iio3.imread(env.video_paths[1], index=None).shape[0] == 3

    def test_default_fps_without_metadata(self, tmp_path):
        inner = PointEnv(render_mode="rgb_array")
        inner.metadata = {"render_modes": ["rgb_array"]}
        assert RecordEpisodeVideo(inner, tmp_path).fps == 10

    def test_rejects_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="render_mode='rgb_array'.*got render_mode=None"):
            RecordEpisodeVideo(PointEnv(), tmp_path)
        with pytest.raises(ValueError, match="format must be one of"):
            RecordEpisodeVideo(PointEnv(render_mode="rgb_array"), tmp_path, format="avi")
        with pytest.raises(ValueError, match="fps must be a positive number"):
            RecordEpisodeVideo(PointEnv(render_mode="rgb_array"), tmp_path, fps=0)
        with pytest.raises(TypeError, match="episode_trigger"):
            RecordEpisodeVideo(PointEnv(render_mode="rgb_array"), tmp_path, episode_trigger=3)


# --------------------------------------------------------------------------- vector envs
def _make_stacked(dict_obs=False, n_obs_steps=2, n_action_steps=4):
    return ActionChunking(
        ObservationHistory(PointEnv(threshold=2.5, dict_obs=dict_obs), n_obs_steps), n_action_steps
    )


def _check_vector(venv, n_envs, dict_obs):
    if dict_obs:
        assert venv.observation_space["pos"].shape == (n_envs, 2, 1)
        assert venv.observation_space["t"].shape == (n_envs, 2, 2)
    else:
        assert venv.observation_space.shape == (n_envs, 2, 1)
    assert venv.single_action_space.shape == (4, 1)
    assert venv.action_space.shape == (n_envs, 4, 1)

    obs, _ = venv.reset(seed=0)
    pos = obs["pos"] if dict_obs else obs
    assert pos.shape == (n_envs, 2, 1) and pos.dtype == np.float32
    np.testing.assert_allclose(pos, 0.0)

    # env 0 moves fast and terminates at its 3rd inner step; the others creep.
    actions = np.full((n_envs, 4, 1), 0.1, dtype=np.float32)
    actions[0] = 1.0
    obs, rewards, terminated, truncated, info = venv.step(actions)
    pos = obs["pos"] if dict_obs else obs
    assert pos.shape == (n_envs, 2, 1)
    if dict_obs:
        assert obs["t"].shape == (n_envs, 2, 2) and obs["t"].dtype == np.int64
        np.testing.assert_array_equal(obs["t"][1:, :, 0], [[3, 4]] * (n_envs - 1))
    np.testing.assert_allclose(pos[0, :, 0], [2.0, 3.0])
    np.testing.assert_allclose(pos[1:, :, 0], [[0.3, 0.4]] * (n_envs - 1), rtol=1e-5)
    assert rewards.shape == (n_envs,)
    assert rewards[0] == pytest.approx(3.0)
    np.testing.assert_array_equal(terminated, [True] + [False] * (n_envs - 1))
    np.testing.assert_array_equal(info["n_steps"], [3] + [4] * (n_envs - 1))
    assert list(info["rewards"][0]) == pytest.approx([1.0, 2.0, 3.0])


@pytest.mark.parametrize("dict_obs", [False, True])
def test_sync_vector_env_batches_shapes(dict_obs):
    n_envs = 3
    venv = gym.vector.SyncVectorEnv([functools.partial(_make_stacked, dict_obs) for _ in range(n_envs)])
    try:
        _check_vector(venv, n_envs, dict_obs)
        # next step autoresets env 0 (NEXT_STEP mode): its history is padded again
        obs, *_ = venv.step(np.zeros((n_envs, 4, 1), np.float32))
        pos = obs["pos"] if dict_obs else obs
        np.testing.assert_allclose(pos[0, :, 0], [0.0, 0.0])
    finally:
        venv.close()


@pytest.mark.parametrize("dict_obs", [False, True])
def test_async_vector_env_batches_shapes(dict_obs):
    n_envs = 2
    venv = gym.vector.AsyncVectorEnv([functools.partial(_make_stacked, dict_obs) for _ in range(n_envs)])
    try:
        _check_vector(venv, n_envs, dict_obs)
    finally:
        venv.close()


def test_vector_env_records_one_video_per_sub_env(tmp_path):
    def make(i):
        env = PointEnv(threshold=1.5, render_mode="rgb_array")
        return RecordEpisodeVideo(env, tmp_path, name_prefix=f"env{i}", format="gif")

    venv = gym.vector.SyncVectorEnv([functools.partial(make, i) for i in range(2)])
    venv.reset(seed=0)
    venv.step(np.ones((2, 1), np.float32))
    _, _, terminated, _, _ = venv.step(np.ones((2, 1), np.float32))
    assert terminated.all()
    venv.close()
    assert sorted(os.listdir(tmp_path)) == ["env0-0.gif", "env1-0.gif"]
    for name in ("env0-0.gif", "env1-0.gif"):
        assert iio3.imread(tmp_path / name, index=None).shape == (3, FRAME_H, FRAME_W, 3)
