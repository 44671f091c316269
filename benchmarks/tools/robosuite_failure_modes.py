"""Classify robosuite Can / Square episodes of a checkpoint by how they end (a diagnostic, not a score).

    MUJOCO_GL=egl python benchmarks/tools/robosuite_failure_modes.py --task can|square CHECKPOINT SEEDS [SEEDS ...] \
        [--sampler ddim --num-inference-steps 10] [--n-action-steps N] [--n-envs N] [--out modes.json]

Each seed (an integer or a ``start:stop`` range) is played as ``python -m dp_gym.benchmark`` plays
it (same env and rollout loop, sampler noise keyed by the seed, ``deterministic=True``) and labelled
from the simulator state. With the benchmark's seeds and ``--n-envs`` the envs run in the same
batches, so on the same machine the episodes are the benchmark's own (another CPU rounds floats
differently); one seed alone (``--n-envs 1``) runs the sampler at batch 1, whose float rounding
differs slightly, and a contact-rich episode can then end otherwise.

Can (``can_state``):

* ``success``: robosuite's check passed (can in its bin compartment, gripper > ~4.2 cm from it);
* ``never_lifted``: the can never rose 5 cm above its start (no grasp);
* ``lifted_not_in_bin``: lifted, but never inside its compartment (dropped, knocked, blocked);
* ``in_bin_gripper_too_close``: the can reached its compartment but the gripper never got clear of
  it; ``held_at_end`` and ``regrasps`` (gripper commands switching open -> close while the can was in
  the compartment) tell holding on from re-grasping it.

A checkpoint with absolute pose actions (10-d) runs in ``<task>_state_abs`` instead.

Square (``square_state``; success = the square nut's centre within 3 cm of the square peg in x and
y and less than 5 cm above the table, robosuite's ``on_peg``):

* ``never_lifted``: the nut never rose 5 cm above its start (no grasp);
* ``lifted_never_over_peg``: lifted, but its centre never came within 3 cm of the peg in x and y;
* ``over_peg_not_down``: it was over the peg (within 3 cm) but never went down onto it: the nut
  hovers over, rests on or jams on the peg's top.
  ``min_peg_offset`` / ``final_peg_offset`` (smallest / last max(|dx|, |dy|) to the peg, m),
  ``final_height`` (nut centre above the table, m; ~0.16 resting on the peg's top),
  ``final_yaw_error_deg`` (nut yaw off the peg's square, -45..45), ``drops`` (times the grasp was
  lost while the nut was lifted and away from the peg) and ``held_at_end`` say more.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dp_gym.agent import PolicyAgent
from dp_gym.benchmark import parse_seeds, with_action_horizon
from dp_gym.checkpoint import load_policy
from dp_gym.episodes import RolloutCallback, rollout
from dp_gym.evaluation import make_vector_env
from dp_gym.experts.base import wrap_angle, yaw_of
from dp_gym.tasks import get_task
from dp_gym.utils.machine import machine_description

ON_PEG_XY = 0.03  # robosuite's on_peg: nut centre within this of the peg in x and y (m)


def label(success: bool, stages: list[tuple[str, bool]], otherwise: str) -> str:
    """``"success"``, else the name of the first stage the episode never reached, else ``otherwise``."""
    if success:
        return "success"
    return next((name for name, reached in stages if not reached), otherwise)


class CanTracker:
    """Follows one Can episode in simulator ``rs``: :meth:`start` after the reset, :meth:`step`
    after every env step, :meth:`result` once it ended (the simulator still in its final state)."""

    def __init__(self, rs) -> None:
        self.rs, self.can_id, self.bin_id = rs, rs.obj_body_id["Can"], rs.object_to_id["can"]
        self.z0, self.lifted, self.in_bin, self.regrasps, self.last_grip = np.nan, False, False, 0, -1.0

    def start(self) -> None:
        self.z0 = float(self.rs.sim.data.body_xpos[self.can_id][2])

    def step(self, action: np.ndarray) -> None:
        pos = self.rs.sim.data.body_xpos[self.can_id]
        self.lifted |= bool(pos[2] > self.z0 + 0.05)
        now_in_bin = not self.rs.not_in_bin(pos, self.bin_id)
        grip = float(np.sign(action[-1]))
        if now_in_bin and self.last_grip < 0 < grip:
            self.regrasps += 1
        self.in_bin |= now_in_bin
        self.last_grip = grip

    def result(self, seed: int, steps: int, success: bool) -> dict:
        rs = self.rs
        held = bool(rs._check_grasp(gripper=rs.robots[0].gripper, object_geoms=rs.objects[self.bin_id].contact_geoms))
        mode = label(success, [("never_lifted", self.lifted), ("lifted_not_in_bin", self.in_bin)], "in_bin_gripper_too_close")
        return {"seed": seed, "mode": mode, "steps": steps, "held_at_end": held, "regrasps": self.regrasps}


class SquareTracker:
    """Follows one Square episode (see :class:`CanTracker`)."""

    def __init__(self, rs) -> None:
        self.rs = rs
        self.nut = rs.nuts[rs.nut_to_id["square"]]
        self.nut_id, self.peg_id = rs.obj_body_id[self.nut.name], rs.peg1_body_id
        self.table_z = float(rs.table_offset[2])
        self.z0, self.lifted, self.over_peg, self.min_offset, self.drops, self.was_held = np.nan, False, False, np.inf, 0, False

    def grasped(self) -> bool:
        return bool(self.rs._check_grasp(gripper=self.rs.robots[0].gripper, object_geoms=self.nut.contact_geoms))

    def peg_offset(self) -> float:  # max(|dx|, |dy|) of the nut centre from the peg axis
        xpos = self.rs.sim.data.body_xpos
        return float(np.max(np.abs(xpos[self.nut_id][:2] - xpos[self.peg_id][:2])))

    def start(self) -> None:
        self.z0 = float(self.rs.sim.data.body_xpos[self.nut_id][2])

    def step(self, action: np.ndarray) -> None:
        offset = self.peg_offset()
        lifted_now = bool(self.rs.sim.data.body_xpos[self.nut_id][2] > self.z0 + 0.05)
        self.lifted |= lifted_now
        self.over_peg |= offset < ON_PEG_XY
        self.min_offset = min(self.min_offset, offset)
        held = self.grasped()
        if self.was_held and not held and lifted_now and offset >= ON_PEG_XY:
            self.drops += 1
        self.was_held = held

    def result(self, seed: int, steps: int, success: bool) -> dict:
        rs = self.rs
        # the square hole lines up with the (axis-aligned) peg when the nut's yaw is a multiple of 90 deg
        yaw_err = wrap_angle(yaw_of(rs.sim.data.body_xmat[self.nut_id]), np.pi / 2)
        mode = label(success, [("never_lifted", self.lifted), ("lifted_never_over_peg", self.over_peg)], "over_peg_not_down")
        return {"seed": seed, "mode": mode, "steps": steps, "held_at_end": self.grasped(),
                "min_peg_offset": round(self.min_offset, 4),
                "final_peg_offset": round(self.peg_offset(), 4),
                "final_height": round(float(rs.sim.data.body_xpos[self.nut_id][2]) - self.table_z, 4),
                "final_yaw_error_deg": round(float(np.degrees(yaw_err)), 1), "drops": self.drops}


def classify(tracker: type, agent: PolicyAgent, env, seeds: list[int]) -> list[dict]:
    """Label one episode per seed as ``python -m dp_gym.benchmark`` runs them: the same
    :func:`dp_gym.episodes.rollout`, sampling noise keyed by the seed, ``deterministic=True``. ``env``
    is a plain env (one episode after another) or the benchmark's vector env
    (:func:`dp_gym.evaluation.make_vector_env`, sync), whose batches of envs reproduce the
    benchmark's episodes on the same machine. Returns one row per seed, in the order of ``seeds``."""
    if isinstance(env, gym.vector.VectorEnv) and not isinstance(env, gym.vector.SyncVectorEnv):
        raise TypeError(f"classify reads each env's simulator in this process: give a plain env or a SyncVectorEnv, "
                        f"not {type(env).__name__}")
    slots = env.envs if isinstance(env, gym.vector.SyncVectorEnv) else [env]
    trackers: dict[int, Any] = {}
    rows: list[dict | None] = [None] * len(seeds)

    def started(ep) -> None:
        trackers[ep.index] = tracker(slots[ep.env_index].unwrapped.robosuite_env)
        trackers[ep.index].start()

    def ended(ep) -> None:
        rows[ep.index] = trackers.pop(ep.index).result(seeds[ep.index], ep.length, bool(ep.info["is_success"]))
        print(json.dumps(rows[ep.index]), flush=True)

    hooks = RolloutCallback(on_episode_start=started, on_step=lambda ep, step: trackers[ep.index].step(step.action),
                            on_episode_end=ended)
    rollout(agent, env, seeds, deterministic=True, callbacks=[hooks])
    return rows  # type: ignore[return-value]


CLASSIFIERS = {"can": ("can_state", CanTracker), "square": ("square_state", SquareTracker)}


def env_task_id(task: str, action_dim: int) -> str:
    """The task id whose env a checkpoint runs in: ``<task>_state`` for OSC delta actions (7-d),
    ``<task>_state_abs`` for absolute poses (position + rot6d + gripper, 10-d)."""
    base = CLASSIFIERS[task][0]
    if action_dim == 7:
        return base
    if action_dim == 10:
        return base + "_abs"
    raise ValueError(f"{task}: expected a checkpoint with 7-d delta or 10-d absolute actions, got action_dim {action_dim}")


def main(argv: list[str] | None = None, task: str | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if task is None:
        p.add_argument("--task", required=True, choices=sorted(CLASSIFIERS))
    p.add_argument("checkpoint", help="checkpoint folder or zoo:<task>/<policy>")
    p.add_argument("seeds", nargs="+", help="episode seeds: integers or start:stop ranges")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--num-inference-steps", type=int, default=10)
    p.add_argument("--n-action-steps", type=int, default=None, help="execute Ta actions per chunk instead of the checkpoint's")
    p.add_argument("--n-envs", type=int, default=1,
                   help="envs stepped as one batch, as benchmark --n-envs runs them (with the benchmark's seeds and "
                        "n-envs, on the same machine, the episodes are the benchmark's own); 1: each seed alone")
    p.add_argument("--out", default=None, help="JSON file for the per-seed labels")
    a = p.parse_args(argv)
    task = task or a.task
    seeds = [s for spec in a.seeds for s in parse_seeds(spec)]
    torch.set_num_threads(1)
    policy, _ = load_policy(a.checkpoint, "cpu")
    task_id = env_task_id(task, policy.config.action_dim)
    if a.n_action_steps is not None:  # as benchmark --n-action-steps does
        policy.config = with_action_horizon(policy, a.n_action_steps)
    agent = PolicyAgent(policy)
    agent.sample_kwargs.update(sampler=a.sampler, num_inference_steps=a.num_inference_steps)
    n_envs = max(1, min(a.n_envs, len(seeds)))
    env = make_vector_env(get_task(task_id), n_envs, "sync", render=False) if n_envs > 1 else get_task(task_id).make_env()
    rows = classify(CLASSIFIERS[task][1], agent, env, seeds)
    env.close()
    counts = Counter(r["mode"] for r in rows)
    print(dict(counts))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"task": task, "task_id": task_id, "checkpoint": a.checkpoint, "sampler": a.sampler,
                       "num_inference_steps": a.num_inference_steps, "n_action_steps": a.n_action_steps,
                       "n_envs": n_envs, "machine": machine_description(), "counts": counts, "episodes": rows}, f, indent=1)


if __name__ == "__main__":
    main()
