"""Classify PickPlaceCan episodes of a checkpoint by how they end (a diagnostic, not a score).

    MUJOCO_GL=egl python benchmarks/tools/can_failure_modes.py CHECKPOINT SEED [SEED ...] \
        [--sampler ddim --num-inference-steps 10] [--out modes.json]

Each seed is replayed as ``python -m dp_gym.benchmark`` runs it (same env, sampler noise keyed by
the seed, ``deterministic=True``) and labelled from the simulator state:

* ``success``: robosuite's check passed (can in its bin compartment, gripper > ~4.2 cm from it);
* ``never_lifted``: the can never rose 5 cm above its start (no grasp);
* ``lifted_not_in_bin``: lifted, but never inside its compartment (dropped, knocked, blocked);
* ``in_bin_gripper_too_close``: the can reached its compartment but the gripper never got clear of
  it; ``held_at_end`` and ``regrasps`` (gripper commands switching open -> close while the can was in
  the compartment) tell holding on from re-grasping it.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from dp_gym.agent import DiffusionAgent
from dp_gym.tasks import get_task


def classify(agent: DiffusionAgent, env, seed: int) -> dict:
    obs, _ = env.reset(seed=seed)
    agent.reset(1)
    agent.set_noise_key(0, seed)
    rs = env.unwrapped.robosuite_env
    can_id = rs.obj_body_id["Can"]
    bin_id = rs.object_to_id["can"]
    z0 = float(rs.sim.data.body_xpos[can_id][2])
    lifted = in_bin = False
    regrasps, last_grip, steps, success = 0, -1.0, 0, False
    for steps in range(1, env.unwrapped.max_episode_steps + 1):
        action, _ = agent.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        pos = rs.sim.data.body_xpos[can_id]
        lifted |= pos[2] > z0 + 0.05
        now_in_bin = not rs.not_in_bin(pos, bin_id)
        grip = float(np.sign(action[-1]))
        if now_in_bin and last_grip < 0 < grip:
            regrasps += 1
        in_bin |= now_in_bin
        last_grip = grip
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    held = bool(rs._check_grasp(gripper=rs.robots[0].gripper, object_geoms=rs.objects[bin_id].contact_geoms))
    if success:
        mode = "success"
    elif not lifted:
        mode = "never_lifted"
    elif not in_bin:
        mode = "lifted_not_in_bin"
    else:
        mode = "in_bin_gripper_too_close"
    return {"seed": seed, "mode": mode, "steps": steps, "held_at_end": held, "regrasps": regrasps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("seeds", type=int, nargs="+")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--num-inference-steps", type=int, default=10)
    p.add_argument("--out", default=None, help="JSON file for the per-seed labels")
    a = p.parse_args()
    torch.set_num_threads(1)
    agent = DiffusionAgent.load(a.checkpoint)
    agent.sample_kwargs.update(sampler=a.sampler, num_inference_steps=a.num_inference_steps)
    env = get_task("can_state").make_env()
    rows = []
    for seed in a.seeds:
        rows.append(classify(agent, env, seed))
        print(json.dumps(rows[-1]), flush=True)
    env.close()
    counts = Counter(r["mode"] for r in rows)
    print(dict(counts))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"checkpoint": a.checkpoint, "sampler": a.sampler, "num_inference_steps": a.num_inference_steps,
                       "counts": counts, "episodes": rows}, f, indent=1)


if __name__ == "__main__":
    main()
