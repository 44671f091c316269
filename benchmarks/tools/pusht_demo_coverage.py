"""How well the Push-T demonstrations themselves score under the task's metric: every recorded
state of the paper's 206 human demos is placed in ``dp_gym/PushT-v0`` and its coverage of the goal
T is measured, per frame, exactly as an episode is scored (coverage > 0.95 = success; score =
clip(max coverage / 0.95, 0, 1)).

    python benchmarks/tools/pusht_demo_coverage.py [--data-dir DIR] \
        [--out benchmarks/results/pusht_keypoints/demos/coverage.json]

Each recorded state is applied with the env's exact placement (``reset_to_state``). The block
keypoints the env then reports match the dataset's recorded keypoints (every frame within 2.1 px,
almost all within a few hundredths of a pixel), so the coverage is that of the recorded scene;
the script refuses to report if any frame differs by more than 5 px. Takes about 30 seconds (25 650 frames).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np

import dp_gym  # noqa: F401  (registers dp_gym/PushT-v0)
from dp_gym.checkpoint import atomic_write_json
from dp_gym.data.replay import read_zarr_replay
from dp_gym.envs.pusht import SUCCESS_THRESHOLD
from dp_gym.paths import dataset_path
from dp_gym.tasks import PUSHT_ZARR
KEYPOINT_TOLERANCE_PX = 5.0  # a wrong placement would be off by tens of pixels


def demo_coverage(states: np.ndarray, keypoints: np.ndarray, episode_ends: np.ndarray) -> list[dict]:
    """Per-episode coverage summary; raise if the env's keypoints disagree with the recorded ones
    (then the placement would not reproduce the recorded scene and the coverage would mean nothing)."""
    env = gym.make("dp_gym/PushT-v0", obs_type="keypoints").unwrapped
    starts = np.concatenate([[0], episode_ends[:-1]])
    rows = []
    for episode, (a, b) in enumerate(zip(starts, episode_ends)):
        coverage, keypoint_error = np.empty(b - a), np.empty(b - a)
        success = False
        for i, t in enumerate(range(a, b)):
            obs, info = env.reset(options={"reset_to_state": states[t]})
            error = keypoint_error[i] = float(np.abs(obs[:18].reshape(9, 2) - keypoints[t]).max())
            if error > KEYPOINT_TOLERANCE_PX:
                raise ValueError(f"frame {t} (episode {episode}): env keypoints differ from the recorded ones by "
                                 f"{error:.2f} px (expected at most {KEYPOINT_TOLERANCE_PX})")
            coverage[i] = info["coverage"]
            success |= info["is_success"]  # the env's own test (coverage > SUCCESS_THRESHOLD)
        rows.append({"episode": episode, "frames": int(b - a), "max_coverage": float(coverage.max()),
                     "final_coverage": float(coverage[-1]), "success": bool(success),
                     "score": float(np.clip(coverage.max() / SUCCESS_THRESHOLD, 0.0, 1.0)),
                     "max_keypoint_error_px": float(keypoint_error.max())})
    env.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $DP_GYM_DATA_DIR, else ./data)")
    p.add_argument("--out", type=Path, default=None, help="write the per-episode table and the summary as JSON here")
    a = p.parse_args(argv)
    data = read_zarr_replay(dataset_path(PUSHT_ZARR, a.data_dir), keys=["state", "keypoint"])
    rows = demo_coverage(data.arrays["state"], data.arrays["keypoint"], data.episode_ends)
    max_cov = np.array([r["max_coverage"] for r in rows])
    summary = {
        "episodes": len(rows),
        "success_rate": float(np.mean([r["success"] for r in rows])),
        "mean_score": float(np.mean([r["score"] for r in rows])),
        "max_coverage_quantiles": {q: float(np.quantile(max_cov, float(q))) for q in ("0", "0.1", "0.5", "0.9", "1")},
        "final_coverage_median": float(np.median([r["final_coverage"] for r in rows])),
        "max_keypoint_error_px": float(max(r["max_keypoint_error_px"] for r in rows)),
    }
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(a.out, {"dataset": PUSHT_ZARR, "success_threshold": SUCCESS_THRESHOLD, "summary": summary,
                                  "episodes": rows})


if __name__ == "__main__":
    main()
