"""benchmarks/tools/robosuite_failure_modes.py: the labels come from the episode's own simulator
state (a scripted expert's Square episode is a success, a policy that never moves is ``never_lifted``
for Can and Square)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "robosuite_failure_modes.py"


@pytest.fixture(scope="module")
def tool():
    os.environ.setdefault("MUJOCO_GL", "egl")
    pytest.importorskip("robosuite")
    spec = importlib.util.spec_from_file_location("robosuite_failure_modes", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class ExpertAgent:
    """The agent interface the tool drives (reset / set_noise_key / predict), backed by a scripted
    expert built after each env reset, as ``dp_gym.collect`` runs it."""

    def __init__(self, name: str, env) -> None:
        self.name, self.env, self.seed, self.expert = name, env, None, None

    def reset(self, n_envs: int) -> None:
        self.expert = None

    def set_noise_key(self, env_index: int, key: int) -> None:
        self.seed = key

    def predict(self, obs, episode_start=None, deterministic: bool = True):
        from dp_gym.experts import make_expert

        if self.expert is None:
            self.expert = make_expert(self.name, self.env, seed=self.seed)
            self.expert.reset()
        return self.expert.act(), None


class StillAgent(ExpertAgent):
    def predict(self, obs, episode_start=None, deterministic: bool = True):
        return np.zeros(self.env.action_space.shape, np.float32), None


def test_square_labels(tool) -> None:
    from dp_gym.tasks import get_task

    env = get_task("square_state").make_env()
    try:
        ok = tool.classify(tool.SquareTracker, ExpertAgent("square", env.unwrapped), env, [3])[0]
        assert ok["mode"] == "success" and ok["steps"] < 400 and ok["min_peg_offset"] < 0.03
        assert ok["final_height"] < 0.05 and abs(ok["final_yaw_error_deg"]) < 10
        still = tool.classify(tool.SquareTracker, StillAgent("square", env.unwrapped), env, [3])[0]
        assert still["mode"] == "never_lifted" and still["steps"] == 400 and not still["held_at_end"]
        assert still["min_peg_offset"] > 0.03
    finally:
        env.close()


def test_can_never_lifted(tool) -> None:
    from dp_gym.tasks import get_task

    env = get_task("can_state").make_env()
    try:
        row = tool.classify(tool.CanTracker, StillAgent("can", env.unwrapped), env, [5])[0]
        assert row["mode"] == "never_lifted" and row["steps"] == 400 and row["regrasps"] == 0
    finally:
        env.close()


class BatchStillAgent:
    """Zero actions for every env of a vector env."""

    def __init__(self, action_dim: int) -> None:
        self.action_dim, self.keys = action_dim, {}

    def reset(self, n_envs: int) -> None:
        pass

    def set_noise_key(self, env_index: int, key: int) -> None:
        self.keys[env_index] = key

    def predict(self, obs, episode_start=None, deterministic: bool = True):
        n = len(next(iter(obs.values())) if isinstance(obs, dict) else obs)
        return np.zeros((n, self.action_dim), np.float32), None


def test_batched_replay_labels_every_seed_in_order(tool) -> None:
    """The benchmark's vector env: each episode's labels come from the env slot it ran in."""
    from dp_gym.evaluation import make_vector_env
    from dp_gym.tasks import get_task

    env = make_vector_env(get_task("can_state"), 2, "sync", render=False)
    try:
        rows = tool.classify(tool.CanTracker, BatchStillAgent(7), env, [5, 6, 7])
    finally:
        env.close()
    assert [r["seed"] for r in rows] == [5, 6, 7]
    assert all(r["mode"] == "never_lifted" and r["steps"] == 400 and r["regrasps"] == 0 for r in rows)


def test_an_async_vector_env_is_refused(tool) -> None:
    import gymnasium as gym

    env = gym.vector.AsyncVectorEnv([lambda: gym.make("CartPole-v1")])
    try:
        with pytest.raises(TypeError, match="plain env or a SyncVectorEnv, not AsyncVectorEnv"):
            tool.classify(tool.CanTracker, BatchStillAgent(1), env, [0])
    finally:
        env.close()


def test_env_follows_the_checkpoint_action_space(tool) -> None:
    assert tool.env_task_id("square", 7) == "square_state"
    assert tool.env_task_id("square", 10) == "square_state_abs"
    assert tool.env_task_id("can", 10) == "can_state_abs"
    with pytest.raises(ValueError, match="action_dim 9"):
        tool.env_task_id("can", 9)
