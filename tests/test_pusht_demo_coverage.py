"""benchmarks/tools/pusht_demo_coverage.py: a demo frame whose block sits on the goal counts as a
success with coverage 1, one far away as a failure; keypoints that disagree with the state are
refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dp_gym.envs.pusht import keypoints_from_state

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "pusht_demo_coverage.py"
GOAL = np.array([256.0, 256.0, np.pi / 4])


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("pusht_demo_coverage", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def episode(block_poses, agent=(100.0, 100.0)):
    states = np.array([[*agent, *pose] for pose in block_poses], dtype=np.float64)
    return states, np.stack([keypoints_from_state(s) for s in states])


def test_goal_frame_succeeds_and_far_frame_fails(tool):
    s1, k1 = episode([[150.0, 150.0, 0.0], GOAL])  # ends on the goal
    s2, k2 = episode([[120.0, 400.0, 1.0], [130.0, 400.0, 1.0], [140.0, 400.0, 1.0]])  # far from it
    rows = tool.demo_coverage(np.concatenate([s1, s2]), np.concatenate([k1, k2]), np.array([2, 5]))
    assert [r["frames"] for r in rows] == [2, 3]
    assert rows[0]["success"] and rows[0]["max_coverage"] > 0.999 and rows[0]["score"] == 1.0
    assert rows[0]["final_coverage"] == rows[0]["max_coverage"]
    assert not rows[1]["success"] and rows[1]["max_coverage"] < 0.2
    assert rows[0]["max_keypoint_error_px"] < 1e-3


def test_keypoints_that_do_not_match_the_state_are_refused(tool):
    s, k = episode([GOAL, GOAL])
    k[1] += 10.0
    with pytest.raises(ValueError, match=r"frame 1 \(episode 0\).*10\.00 px"):
        tool.demo_coverage(s, k, np.array([2]))
