"""Replay the D4RL kitchen demonstrations open-loop in ``dp_gym/FrankaKitchen-v0`` and report drift.

For every demo: reset the simulator to the demo's first recorded frame (robot qpos 9 + object qpos
21 from the observation; velocities are not recorded, so 0), apply the recorded actions one by one
and compare the simulated observations and task completions with the recorded ones.

Reported per episode: mean / max absolute error of the robot qpos and object qpos over the episode,
the error at the last frame, the tasks completed in the recording (completion test on the recorded
observation) and in the replay, and the step at which each task was first completed in both. Also a
one-step error (every step restarted from the recorded frame, qvel from finite differences), which
separates the per-step dynamics mismatch from the compounding of open-loop replay.

    python benchmarks/kitchen_replay_check.py --out benchmarks/results/kitchen_complete/simulator_check/replay_check.json

Variants (``--variants``): ``nonoise`` (observation noise off), ``d4rl_noise`` (the env's default
D4RL-level observation noise, which also enters the controller), ``recorded_reference`` (noise off,
and the velocity controller integrates from the *recorded* robot qpos of each frame, as it did when
the demo was recorded: the recorded observations carry the noise realisation that drove the original
control inputs), ``absolute_targets`` (the env's default noise, ``action_mode="absolute"``: each
recorded velocity turned into the joint position target it commanded, recorded qpos + 2 * action *
dt, which no longer depends on the noise of the replay) and ``absolute_targets_nonoise``. ``--frame-skips`` also reports the one-step error for other frame skips.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from dp_gym.data.d4rl import read_d4rl_hdf5
from dp_gym.envs.kitchen import (
    KITCHEN_COMPLETE_TASKS, N_QPOS, N_QVEL, N_ROBOT_QPOS, STEP_DT, FrankaKitchenD4RLEnv, task_completions,
    velocity_to_position_targets,
)
from dp_gym.paths import dataset_path

# name -> (env kwargs, use the recorded observations as the controller's reference)
NO_NOISE = dict(robot_noise_ratio=0.0, object_noise_ratio=0.0)
VARIANTS: dict[str, tuple[dict[str, float], bool]] = {
    "nonoise": (NO_NOISE, False),
    "d4rl_noise": ({}, False),
    "recorded_reference": (NO_NOISE, True),
    "absolute_targets": ({"action_mode": "absolute"}, False),
    "absolute_targets_nonoise": ({**NO_NOISE, "action_mode": "absolute"}, False),
}


def first_completion_steps(qpos_seq: np.ndarray, tasks: tuple[str, ...]) -> dict[str, int]:
    """Frame index at which each task is first within the completion threshold (absent: never)."""
    first: dict[str, int] = {}
    for t, q in enumerate(qpos_seq):
        for task in task_completions(q, [x for x in tasks if x not in first]):
            first[task] = t
    return first


def replay_episode(env: FrankaKitchenD4RLEnv, obs: np.ndarray, actions: np.ndarray, seed: int,
                   recorded_reference: bool = False) -> dict[str, Any]:
    """Open-loop replay of one demo from its first frame; returns simulated qpos and completions.

    With ``recorded_reference`` the velocity controller integrates from the recorded (noisy) robot
    qpos of each frame, as it did when the demo was recorded; the simulated state is never reset.
    """
    env.reset(seed=seed, options={"qpos": obs[0, :N_QPOS].astype(np.float64), "qvel": np.zeros(N_QVEL)})
    sim = [env.qpos]
    info: dict[str, Any] = {}
    for t, a in enumerate(actions[:-1]):  # obs[t+1] is the result of actions[t]; the last action has no next frame
        if recorded_reference:
            env.set_control_reference(obs[t, :N_ROBOT_QPOS])
        _, _, _, _, info = env.step(a)
        sim.append(env.qpos)
    return {"sim_qpos": np.stack(sim), "completed": info.get("completed_tasks", [])}


def one_step_error(env: FrankaKitchenD4RLEnv, obs: np.ndarray, actions: np.ndarray, seed: int, stride: int = 1) -> np.ndarray:
    """Per-step |sim - recorded| of the robot qpos after one step from the recorded frame (every
    ``stride``-th frame), with the recorded qpos as the controller's reference."""
    errs = []
    dt = STEP_DT  # D4RL kitchen: 40 substeps of 2 ms
    for t in range(1, len(obs) - 1, stride):
        qvel = np.zeros(N_QVEL)
        qvel[:N_ROBOT_QPOS] = (obs[t, :N_ROBOT_QPOS] - obs[t - 1, :N_ROBOT_QPOS]) / dt
        env.reset(seed=seed + t, options={"qpos": obs[t, :N_QPOS].astype(np.float64), "qvel": qvel})
        env.set_control_reference(obs[t, :N_ROBOT_QPOS])
        env.step(actions[t])
        errs.append(np.abs(env.qpos[:N_ROBOT_QPOS] - obs[t + 1, :N_ROBOT_QPOS]).mean())
    return np.asarray(errs)


def frame_skip_sweep(obs_all: np.ndarray, act_all: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                     frame_skips: list[int], stride: int = 4) -> dict[int, float]:
    """Mean one-step robot qpos error for each simulator frame skip (substeps of 2 ms per step)."""
    env = FrankaKitchenD4RLEnv(max_episode_steps=10_000, terminate_on_tasks_completed=False, **NO_NOISE)
    out = {}
    for fs in frame_skips:
        env.robot.frame_skip = fs  # the library's ctor insists on 12 Hz, so the sweep sets it afterwards
        errs = [one_step_error(env, obs_all[s:e], act_all[s:e], seed=i, stride=stride) for i, (s, e) in enumerate(zip(starts, ends))]
        out[fs] = float(np.concatenate(errs).mean())
        print(f"frame skip {fs}: one-step robot qpos MAE {out[fs]:.5f}")
    env.close()
    return out


def check(data_dir: str | None, variants: list[str], one_step: bool, frame_skips: list[int]) -> dict[str, Any]:
    ep = read_d4rl_hdf5(dataset_path("kitchen/kitchen_complete-v0.hdf5", data_dir))
    obs_all, act_all = ep.arrays["obs"].astype(np.float64), ep.arrays["action"].astype(np.float64)
    tasks = KITCHEN_COMPLETE_TASKS
    report: dict[str, Any] = {"dataset": "kitchen/kitchen_complete-v0.hdf5", "episodes": ep.n_episodes, "variants": {}}
    if frame_skips:
        report["one_step_robot_qpos_mae_by_frame_skip"] = frame_skip_sweep(obs_all, act_all, ep.episode_starts, ep.episode_ends, frame_skips)
    for name in variants:
        env_kwargs, use_reference = VARIANTS[name]
        env = FrankaKitchenD4RLEnv(max_episode_steps=10_000, terminate_on_tasks_completed=False, **env_kwargs)
        rows = []
        t0 = time.perf_counter()
        for i, (s, e) in enumerate(zip(ep.episode_starts, ep.episode_ends)):
            obs, act = obs_all[s:e], act_all[s:e]
            if env_kwargs.get("action_mode") == "absolute":
                act = velocity_to_position_targets(obs[:, :N_ROBOT_QPOS], act)
            rec_q = obs[:, :N_QPOS]
            r = replay_episode(env, obs, act, seed=i, recorded_reference=use_reference)
            err = np.abs(r["sim_qpos"] - rec_q)
            rec_first = first_completion_steps(rec_q, tasks)
            sim_first = first_completion_steps(r["sim_qpos"], tasks)
            row = {
                "episode": i, "length": int(e - s),
                "robot_qpos_mae": float(err[:, :N_ROBOT_QPOS].mean()), "robot_qpos_max": float(err[:, :N_ROBOT_QPOS].max()),
                "object_qpos_mae": float(err[:, N_ROBOT_QPOS:].mean()), "object_qpos_max": float(err[:, N_ROBOT_QPOS:].max()),
                "final_robot_qpos_mae": float(err[-1, :N_ROBOT_QPOS].mean()), "final_object_qpos_mae": float(err[-1, N_ROBOT_QPOS:].mean()),
                "recorded_completed": [t for t in tasks if t in rec_first], "replay_completed": r["completed"],
                "recorded_first_step": rec_first, "replay_first_step": sim_first,
            }
            if one_step:
                row["one_step_robot_qpos_mae"] = float(one_step_error(env, obs, act, seed=1000 * i).mean())
            rows.append(row)
        env.close()
        n_all_rec = sum(len(r["recorded_completed"]) == len(tasks) for r in rows)
        n_all_sim = sum(len(r["replay_completed"]) == len(tasks) for r in rows)
        summary = {
            "env_kwargs": env_kwargs, "recorded_controller_reference": use_reference,
            "demos_completing_all_recorded": n_all_rec,
            "demos_completing_all_replay": n_all_sim,
            "replay_completed_count_hist": np.bincount([len(r["replay_completed"]) for r in rows], minlength=len(tasks) + 1).tolist(),
            "per_task_replay_success": {t: sum(t in r["replay_completed"] for r in rows) for t in tasks},
            "robot_qpos_mae_mean": float(np.mean([r["robot_qpos_mae"] for r in rows])),
            "object_qpos_mae_mean": float(np.mean([r["object_qpos_mae"] for r in rows])),
            "wall_s": time.perf_counter() - t0,
        }
        if one_step:
            summary["one_step_robot_qpos_mae_mean"] = float(np.mean([r["one_step_robot_qpos_mae"] for r in rows]))
        report["variants"][name] = {"summary": summary, "episodes": rows}
        print(f"[{name}] all 4 tasks: recorded {n_all_rec}/{ep.n_episodes}, replay {n_all_sim}/{ep.n_episodes}; "
              f"robot qpos MAE {summary['robot_qpos_mae_mean']:.4f}, object qpos MAE {summary['object_qpos_mae_mean']:.4f}"
              + (f", one-step robot MAE {summary['one_step_robot_qpos_mae_mean']:.4f}" if one_step else ""))
        for r in rows:
            print(f"  ep {r['episode']:2d} len {r['length']} robot MAE {r['robot_qpos_mae']:.4f} obj MAE {r['object_qpos_mae']:.4f} "
                  f"replay {r['replay_completed']} first {r['replay_first_step']} vs recorded {r['recorded_first_step']}")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--variants", default="nonoise,d4rl_noise,recorded_reference", help=f"comma list of {sorted(VARIANTS)}")
    p.add_argument("--one-step", action="store_true", help="also measure the one-step (non-compounding) error")
    p.add_argument("--frame-skips", default="", help="comma list, e.g. 30,35,40,45,50 (one-step error per frame skip)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    a = p.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variants {bad}; expected some of {sorted(VARIANTS)}")
    report = check(a.data_dir, variants, a.one_step, [int(x) for x in a.frame_skips.split(",") if x])
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
