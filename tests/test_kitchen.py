"""Franka Kitchen: D4RL-layout adapter on FrankaKitchen-v1, D4RL / Minari readers, p-k metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")
h5py = pytest.importorskip("h5py")

from dp_gym.benchmark import markdown_table  # noqa: E402
from dp_gym.evaluation import p_k_metrics, run_seeds  # noqa: E402
from dp_gym.data.d4rl import episode_ends_from_flags, read_d4rl_hdf5  # noqa: E402
from dp_gym.envs.kitchen import (  # noqa: E402
    KITCHEN_COMPLETE_TASKS, N_QPOS, N_QVEL, STEP_DT, FrankaKitchenD4RLEnv, goal_vector, position_targets_to_velocity,
    task_completions, velocity_to_position_targets,
)
from dp_gym.tasks import get_task  # noqa: E402

NO_NOISE = dict(robot_noise_ratio=0.0, object_noise_ratio=0.0)
# Episode lengths of kitchen_complete-v0.hdf5 (terminal flag on the last frame of each of the 19 demos).
KITCHEN_COMPLETE_LENGTHS = [184, 185, 191, 195, 206, 195, 182, 195, 187, 194, 196, 195, 192, 194, 183, 204, 206, 189, 207]


@pytest.fixture(scope="module")
def kitchen(data_dir):
    return read_d4rl_hdf5(data_dir / "kitchen" / "kitchen_complete-v0.hdf5")


# -- D4RL reader ----------------------------------------------------------------------------------

def test_reader_splits_19_episodes(kitchen):
    assert kitchen.n_episodes == 19
    assert kitchen.episode_lengths().tolist() == KITCHEN_COMPLETE_LENGTHS
    assert kitchen.arrays["obs"].shape == (3680, 60) and kitchen.arrays["obs"].dtype == np.float32
    assert kitchen.arrays["action"].shape == (3680, 9) and np.abs(kitchen.arrays["action"]).max() <= 1.0
    # the task's reader gives exactly the policy's keys
    ep = get_task("kitchen_complete").load_dataset(None)
    assert sorted(ep.arrays) == ["action", "obs"] and ep.episode_lengths().tolist() == KITCHEN_COMPLETE_LENGTHS


def test_episode_ends_from_flags_and_bad_files(tmp_path):
    terminals = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    timeouts = np.array([0, 0, 0, 0, 1, 0, 0], bool)
    assert episode_ends_from_flags(terminals, timeouts).tolist() == [3, 5]
    assert episode_ends_from_flags(terminals, timeouts, keep_unfinished=True).tolist() == [3, 5, 7]
    with pytest.raises(ValueError, match="no episode end"):
        episode_ends_from_flags(np.zeros(4, bool))
    with pytest.raises(FileNotFoundError, match="not found"):
        read_d4rl_hdf5(tmp_path / "missing.hdf5")
    path = tmp_path / "d.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.arange(14, dtype=np.float32).reshape(7, 2)
        f["actions"] = np.zeros((7, 1), np.float32)
        f["terminals"], f["timeouts"] = terminals, timeouts
    ep = read_d4rl_hdf5(path)
    assert ep.episode_ends.tolist() == [3, 5] and ep.meta["dropped_frames"] == 2
    np.testing.assert_array_equal(ep.arrays["obs"][3], [6, 7])
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(KeyError, match="missing \\['actions', 'terminals'\\]"):
        read_d4rl_hdf5(tmp_path / "bad.hdf5")


# -- adapter --------------------------------------------------------------------------------------

def test_observation_layout_matches_dataset_first_frames(kitchen):
    obs = kitchen.arrays["obs"]
    env = FrankaKitchenD4RLEnv(**NO_NOISE)
    assert env.observation_space.shape == (60,) and env.action_space.shape == (9,)
    for start in kitchen.episode_starts[:3]:
        # from the recorded simulator state, the noise-free adapter observes exactly the recorded frame
        sim_obs, _ = env.reset(seed=0, options={"qpos": obs[start, :N_QPOS], "qvel": np.zeros(N_QVEL)})
        np.testing.assert_allclose(sim_obs, obs[start], atol=1e-6)
    # default start: same goal block; robot / objects near the demos' starts; D4RL-level noise
    env = FrankaKitchenD4RLEnv()
    o1, _ = env.reset(seed=1)
    o2, _ = env.reset(seed=2)
    first = obs[kitchen.episode_starts]
    np.testing.assert_array_equal(o1[30:], obs[0, 30:])
    np.testing.assert_allclose(o1[30:], goal_vector(KITCHEN_COMPLETE_TASKS))
    assert np.all(np.abs(o1[:9] - first[:, :9].mean(0)) < 0.15)
    assert np.all(np.abs(o1[9:30] - first[:, 9:30].mean(0)) < 0.02)
    noise = np.abs(o1[:30] - o2[:30])
    assert 1e-3 < noise[:9].max() <= 0.02  # robot: +-0.01 rad, as in the dataset
    assert noise[9:30].max() <= 0.02
    env.close()


def test_short_replay_completes_first_task(kitchen):
    obs, act = kitchen.arrays["obs"], kitchen.arrays["action"]
    env = FrankaKitchenD4RLEnv(**NO_NOISE)
    env.reset(seed=0, options={"qpos": obs[0, :N_QPOS], "qvel": np.zeros(N_QVEL)})
    recorded_first = next(t for t in range(len(obs)) if task_completions(obs[t, :N_QPOS], ["microwave"]))
    assert 20 < recorded_first < 80
    infos = []
    for t in range(recorded_first + 10):
        env.set_control_reference(obs[t, :9])  # the recorded (noisy) qpos drove the recorded controls
        _, reward, terminated, truncated, info = env.step(act[t])
        infos.append(info)
        assert not (terminated or truncated)
    assert infos[0]["completed_tasks"] == []
    assert infos[-1]["completed_tasks"] == ["microwave"] and infos[-1]["n_completed"] == 1
    first = next(i for i, inf in enumerate(infos) if inf["step_task_completions"])
    assert abs(first + 1 - recorded_first) <= 3  # obs[t+1] follows action t
    assert infos[first]["step_task_completions"] == ["microwave"] and not infos[-1]["is_success"]
    assert infos[-1]["tasks_to_complete"] == ["kettle", "light switch", "slide cabinet"]
    # the robot tracks the recording closely over this stretch
    assert np.abs(env.qpos[:9] - obs[recorded_first + 10, :9]).mean() < 0.03


def test_absolute_targets_drive_the_robot_as_the_velocities_do():
    """``action_mode="absolute"`` takes joint position targets; the target made from a velocity
    action (observed qpos + 2 * action * dt) moves the simulator exactly as that velocity does."""
    vel, ab = FrankaKitchenD4RLEnv(), FrankaKitchenD4RLEnv(action_mode="absolute")
    assert vel.dt == ab.dt == STEP_DT and np.all(vel.robot.act_rng == 2.0) and np.all(vel.robot.act_mid == 0.0)
    assert ab.action_space.shape == (9,) and ab.action_space.high[7] == np.float32(0.04)
    rng = np.random.default_rng(0)
    ov, _ = vel.reset(seed=3)
    oa, _ = ab.reset(seed=3)
    for _ in range(5):
        a = rng.uniform(-0.9, 0.9, size=9)
        target = velocity_to_position_targets(oa[:9], a)
        np.testing.assert_allclose(position_targets_to_velocity(oa[:9], target), a, atol=1e-12)
        ov, *_ = vel.step(a)
        oa, *_ = ab.step(target)
        np.testing.assert_allclose(ab.qpos, vel.qpos, atol=1e-6)  # targets made from the float32 obs
        np.testing.assert_allclose(oa, ov, atol=1e-6)
    # a target beyond one step's reach (0.16 rad) is commanded at the velocity limit
    far = position_targets_to_velocity(np.zeros(9), np.r_[1.0, -1.0, np.zeros(7)])
    np.testing.assert_array_equal(far[:2], [1.0, -1.0])
    with pytest.raises(ValueError, match="joint position targets"):
        ab.step(np.zeros(7))
    with pytest.raises(ValueError, match="action_mode must be one of"):
        FrankaKitchenD4RLEnv(action_mode="torque")
    with pytest.raises(ValueError, match="shape \\(..., 9\\)"):
        velocity_to_position_targets(np.zeros((4, 9)), np.zeros((4, 7)))


def test_absolute_target_replay_completes_all_tasks(data_dir):
    """The demos' actions as position targets (task ``kitchen_complete_abs``) replayed open loop
    from the first recorded frame, observation noise on: unlike the velocities, they do not depend
    on the noise the recording saw, and the demos finish all four tasks."""
    task = get_task("kitchen_complete_abs")
    ep = task.load_dataset(str(data_dir))
    obs, targets = ep.arrays["obs"], ep.arrays["action"]
    assert targets.shape == (len(obs), 9) and targets.dtype == np.float32
    env = task.make_env()
    try:
        start = 0
        for end in ep.episode_ends[:3]:
            env.reset(seed=0, options={"qpos": obs[start, :N_QPOS]})
            for t in range(start, end):
                _, _, terminated, truncated, info = env.step(targets[t])
                if terminated or truncated:
                    break
            assert info["is_success"] and info["completed_tasks"] == list(KITCHEN_COMPLETE_TASKS)
            start = end
    finally:
        env.close()


def test_success_termination_and_truncation():
    env = FrankaKitchenD4RLEnv(**NO_NOISE, max_episode_steps=3)
    qpos = env.qpos
    goal = goal_vector(KITCHEN_COMPLETE_TASKS)
    solved = np.where(goal != 0, goal, qpos)
    env.reset(seed=0, options={"qpos": solved})
    _, reward, terminated, truncated, info = env.step(np.zeros(9, np.float32))
    assert terminated and not truncated and info["is_success"] and reward == 4.0
    assert info["n_completed"] == 4 and sorted(info["completed_tasks"]) == sorted(KITCHEN_COMPLETE_TASKS)
    env.reset(seed=0)
    flags = [env.step(np.zeros(9, np.float32))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    with pytest.raises(ValueError, match="shape \\(9,\\)"):
        env.step(np.zeros(7))
    with pytest.raises(ValueError, match="unknown kitchen task|distinct names"):
        FrankaKitchenD4RLEnv(tasks_to_complete=["toaster"])
    with pytest.raises(ValueError, match="qpos of shape \\(30,\\)"):
        env.reset(options={"qpos": np.zeros(5)})


def test_registered_env_and_fast_render():
    import gymnasium as gym

    import dp_gym  # noqa: F401

    env = gym.make("dp_gym/FrankaKitchen-v0", render_mode="rgb_array", width=64, height=48)
    obs, info = env.reset(seed=0)
    assert obs.shape == (60,) and set(info) >= {"is_success", "completed_tasks", "n_completed", "step_task_completions"}
    inner = env.unwrapped
    assert inner.robot.model.vis.quality.shadowsize == 0 and inner.robot.model.vis.quality.offsamples == 0
    img = env.render()
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.std() > 5
    env.close()


# -- metrics --------------------------------------------------------------------------------------

def test_p_k_metrics_on_hand_made_counts():
    completed = [["microwave", "kettle"], [], ["microwave", "kettle", "light switch", "slide cabinet"], ["kettle"]]
    m = p_k_metrics([len(c) for c in completed], k_max=4)
    assert m == {"p1": 0.75, "p2": 0.5, "p3": 0.25, "p4": 0.25, "mean_completed": 1.75}
    assert p_k_metrics([7, 7], 7)["p7"] == 1.0 and p_k_metrics([0, 0], 3)["p1"] == 0.0
    for bad in ([], [1, -1], [0.5]):
        with pytest.raises(ValueError):
            p_k_metrics(bad, 4)
    table = markdown_table({"dp": {"episodes": 4, **m, "success_rate": 0.25, "success_ci95": [0.05, 0.7],
                                   "mean_episode_length": 250.0, "mean_max_reward": 1.0}})
    assert "| p1 | p2 | p3 | p4 | mean completed |" in table and "| 0.75 | 0.50 | 0.25 | 0.25 | 1.75 |" in table


class _ZeroAgent:
    """Minimal agent for ``run_seeds`` (zero joint velocities): checks the count bookkeeping."""

    n_replans = 0

    def reset(self, n_envs=1):
        pass

    def set_noise_key(self, i, seed):
        pass

    def predict(self, obs, episode_start=None, deterministic=True):
        return np.zeros((len(obs), 9), np.float32), None


def test_rollout_records_completed_task_counts():
    task = get_task("kitchen_complete")
    assert task.count_info_key == "n_completed" and task.count_max == 4
    short = dataclasses.replace(task, env_kwargs={"max_episode_steps": 4})
    r = run_seeds(_ZeroAgent(), short, seeds=[0, 1, 2], n_envs=2)
    assert r["count"].tolist() == [0, 0, 0] and r["length"].tolist() == [4, 4, 4] and not r["success"].any()


# -- Minari ---------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*(eval_env|env_spec).*:UserWarning")  # no env spec: written from buffers
def test_minari_round_trip(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    from minari.data_collector import EpisodeBuffer
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import KitchenEnv

    from dp_gym.data.minari_reader import read_minari_kitchen

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    tasks = list(KITCHEN_COMPLETE_TASKS)
    env = KitchenEnv(tasks_to_complete=tasks, robot_noise_ratio=0.0, object_noise_ratio=0.0)
    rng = np.random.default_rng(0)
    buffers, true_qpos = [], []
    for ep_len in (5, 3):
        obs, _ = env.reset(seed=int(rng.integers(1000)))
        frames, qpos, actions = [obs], [env.data.qpos[:30].copy()], []
        for _ in range(ep_len):
            a = rng.uniform(-1, 1, 9)
            obs, *_ = env.step(a)
            frames.append(obs)
            qpos.append(env.data.qpos[:30].copy())
            actions.append(a)
        stacked = {"observation": np.stack([f["observation"] for f in frames]),
                   "achieved_goal": {t: np.stack([f["achieved_goal"][t] for f in frames]) for t in tasks},
                   "desired_goal": {t: np.stack([f["desired_goal"][t] for f in frames]) for t in tasks}}
        buffers.append(EpisodeBuffer(observations=stacked, actions=np.stack(actions), rewards=np.zeros(ep_len),
                                     terminations=np.zeros(ep_len, bool), truncations=np.r_[np.zeros(ep_len - 1, bool), True]))
        true_qpos.append(np.stack(qpos[:-1]))
    minari.create_dataset_from_buffers("test/kitchen/tiny-v0", buffers, observation_space=env.observation_space,
                                       action_space=env.action_space, data_format="hdf5", algorithm_name="random",
                                       author="dp_gym tests", author_email="none@example.com", code_permalink="tests/test_kitchen.py",
                                       description="tiny FrankaKitchen-v1 dataset for the reader round trip", eval_env=None)
    env.close()

    ep = read_minari_kitchen("test/kitchen/tiny-v0")
    assert ep.episode_lengths().tolist() == [5, 3]
    assert ep.arrays["obs"].shape == (8, 60) and ep.arrays["action"].shape == (8, 9)
    # robot + object qpos come out of FrankaKitchen-v1's 59-d observation at the simulator's qpos
    np.testing.assert_allclose(ep.arrays["obs"][:, :30], np.concatenate(true_qpos), atol=1e-5)
    np.testing.assert_allclose(ep.arrays["obs"][:, 30:], np.tile(goal_vector(tasks), (8, 1)), atol=1e-6)
    np.testing.assert_allclose(ep.arrays["action"][:5], np.stack([b for b in buffers[0].actions]), atol=1e-6)
    with pytest.raises(FileNotFoundError):
        read_minari_kitchen("test/kitchen/absent-v0")
