"""Classify robosuite Can / Square episodes of a checkpoint by how they end (a diagnostic, not a score).

    MUJOCO_GL=egl python benchmarks/tools/robosuite_failure_modes.py --task can|square CHECKPOINT SEED [SEED ...] \
        [--sampler ddim --num-inference-steps 10] [--n-action-steps N] [--out modes.json]

Each seed is replayed as ``python -m dp_gym.benchmark`` runs it (same env, sampler noise keyed by
the seed, ``deterministic=True``) and labelled from the simulator state.

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
from typing import Callable

import numpy as np
import torch

from dp_gym.agent import PolicyAgent
from dp_gym.benchmark import with_action_horizon
from dp_gym.checkpoint import load_policy
from dp_gym.episodes import RolloutCallback, rollout
from dp_gym.experts.base import wrap_angle, yaw_of
from dp_gym.tasks import get_task

ON_PEG_XY = 0.03  # robosuite's on_peg: nut centre within this of the peg in x and y (m)


def run_episode(agent: PolicyAgent, env, seed: int, on_reset: Callable[[], None],
                on_step: Callable[[np.ndarray], None]) -> tuple[int, bool]:
    """One benchmark-identical episode (:func:`dp_gym.episodes.rollout`, noise keyed by the seed);
    ``on_reset()`` sees the simulator's initial state and ``on_step(action)`` the state after every
    step. Returns (steps, success); the env is left in the episode's final state."""
    hooks = RolloutCallback(on_episode_start=lambda ep: on_reset(), on_step=lambda ep, step: on_step(step.action))
    (episode,) = rollout(agent, env, [seed], deterministic=True, callbacks=[hooks])
    return episode.length, bool(episode.info["is_success"])


def label(success: bool, stages: list[tuple[str, bool]], otherwise: str) -> str:
    """``"success"``, else the name of the first stage the episode never reached, else ``otherwise``."""
    if success:
        return "success"
    return next((name for name, reached in stages if not reached), otherwise)


def classify_can(agent: PolicyAgent, env, seed: int) -> dict:
    rs = env.unwrapped.robosuite_env
    can_id = rs.obj_body_id["Can"]
    bin_id = rs.object_to_id["can"]
    st = dict(z0=np.nan, lifted=False, in_bin=False, regrasps=0, last_grip=-1.0)

    def on_reset() -> None:
        st["z0"] = float(rs.sim.data.body_xpos[can_id][2])

    def on_step(action: np.ndarray) -> None:
        pos = rs.sim.data.body_xpos[can_id]
        st["lifted"] |= bool(pos[2] > st["z0"] + 0.05)
        now_in_bin = not rs.not_in_bin(pos, bin_id)
        grip = float(np.sign(action[-1]))
        if now_in_bin and st["last_grip"] < 0 < grip:
            st["regrasps"] += 1
        st["in_bin"] |= now_in_bin
        st["last_grip"] = grip

    steps, success = run_episode(agent, env, seed, on_reset, on_step)
    held = bool(rs._check_grasp(gripper=rs.robots[0].gripper, object_geoms=rs.objects[bin_id].contact_geoms))
    mode = label(success, [("never_lifted", st["lifted"]), ("lifted_not_in_bin", st["in_bin"])],
                 "in_bin_gripper_too_close")
    return {"seed": seed, "mode": mode, "steps": steps, "held_at_end": held, "regrasps": st["regrasps"]}


def classify_square(agent: PolicyAgent, env, seed: int) -> dict:
    rs = env.unwrapped.robosuite_env
    nut = rs.nuts[rs.nut_to_id["square"]]
    nut_id, peg_id = rs.obj_body_id[nut.name], rs.peg1_body_id
    table_z = float(rs.table_offset[2])

    def grasped() -> bool:
        return bool(rs._check_grasp(gripper=rs.robots[0].gripper, object_geoms=nut.contact_geoms))

    def peg_offset() -> float:  # max(|dx|, |dy|) of the nut centre from the peg axis
        return float(np.max(np.abs(rs.sim.data.body_xpos[nut_id][:2] - rs.sim.data.body_xpos[peg_id][:2])))

    st = dict(z0=np.nan, lifted=False, over_peg=False, min_offset=np.inf, drops=0, was_held=False)

    def on_reset() -> None:
        st["z0"] = float(rs.sim.data.body_xpos[nut_id][2])

    def on_step(action: np.ndarray) -> None:
        offset = peg_offset()
        lifted_now = bool(rs.sim.data.body_xpos[nut_id][2] > st["z0"] + 0.05)
        st["lifted"] |= lifted_now
        st["over_peg"] |= offset < ON_PEG_XY
        st["min_offset"] = min(st["min_offset"], offset)
        held = grasped()
        if st["was_held"] and not held and lifted_now and offset >= ON_PEG_XY:
            st["drops"] += 1
        st["was_held"] = held

    steps, success = run_episode(agent, env, seed, on_reset, on_step)
    # the square hole lines up with the (axis-aligned) peg when the nut's yaw is a multiple of 90 deg
    yaw_err = wrap_angle(yaw_of(rs.sim.data.body_xmat[nut_id]), np.pi / 2)
    mode = label(success, [("never_lifted", st["lifted"]), ("lifted_never_over_peg", st["over_peg"])],
                 "over_peg_not_down")
    return {"seed": seed, "mode": mode, "steps": steps, "held_at_end": grasped(),
            "min_peg_offset": round(st["min_offset"], 4),
            "final_peg_offset": round(peg_offset(), 4),
            "final_height": round(float(rs.sim.data.body_xpos[nut_id][2]) - table_z, 4),
            "final_yaw_error_deg": round(float(np.degrees(yaw_err)), 1), "drops": st["drops"]}


CLASSIFIERS = {"can": ("can_state", classify_can), "square": ("square_state", classify_square)}


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
    p.add_argument("checkpoint")
    p.add_argument("seeds", type=int, nargs="+")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--num-inference-steps", type=int, default=10)
    p.add_argument("--n-action-steps", type=int, default=None, help="execute Ta actions per chunk instead of the checkpoint's")
    p.add_argument("--out", default=None, help="JSON file for the per-seed labels")
    a = p.parse_args(argv)
    task = task or a.task
    classify = CLASSIFIERS[task][1]
    torch.set_num_threads(1)
    policy, _ = load_policy(a.checkpoint, "cpu")
    task_id = env_task_id(task, policy.config.action_dim)
    if a.n_action_steps is not None:  # as benchmark --n-action-steps does
        policy.config = with_action_horizon(policy, a.n_action_steps)
    agent = PolicyAgent(policy)
    agent.sample_kwargs.update(sampler=a.sampler, num_inference_steps=a.num_inference_steps)
    env = get_task(task_id).make_env()
    rows = []
    for seed in a.seeds:
        rows.append(classify(agent, env, seed))
        print(json.dumps(rows[-1]), flush=True)
    env.close()
    counts = Counter(r["mode"] for r in rows)
    print(dict(counts))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"task": task, "task_id": task_id, "checkpoint": a.checkpoint, "sampler": a.sampler,
                       "num_inference_steps": a.num_inference_steps, "n_action_steps": a.n_action_steps,
                       "counts": counts, "episodes": rows}, f, indent=1)


if __name__ == "__main__":
    main()
