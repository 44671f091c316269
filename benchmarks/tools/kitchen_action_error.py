"""Teacher-forced action error of kitchen checkpoints on the D4RL demos (a diagnostic, not a score).

    DP_GYM_DATA_DIR=/path/to/data python benchmarks/tools/kitchen_action_error.py \
        bc=runs/kitchen_bc/checkpoints/latest ibc=runs/kitchen_ibc/checkpoints/latest [--frames 64]

Each demo's own observations are fed in order to the agent (one env, reset at the demo's start,
``deterministic=True``), and the action it returns for each frame is compared with the recorded
action: mean squared error over the first ``--frames`` frames of every demo, in raw action units.
It tells "the policy did not learn the demos' actions" apart from "it learnt them but drifts in
closed loop" without running the simulator.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from dp_gym.agent import PolicyAgent
from dp_gym.data.replay import EpisodeData
from dp_gym.tasks import get_task


def teacher_forced_mse(agent: PolicyAgent, data: EpisodeData, frames: int) -> float:
    obs, actions = data.arrays["obs"], data.arrays["action"]
    errors = []
    for start, end in zip(data.episode_starts, data.episode_ends):
        agent.reset()
        for t in range(int(start), int(min(end, start + frames))):
            action, _ = agent.predict(obs[t], deterministic=True)
            errors.append(np.mean((np.asarray(action).reshape(-1) - actions[t]) ** 2))
    return float(np.mean(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("policies", nargs="+", help="NAME=CHECKPOINT_DIR")
    parser.add_argument("--data-dir", default=None, help="data directory (default: $DP_GYM_DATA_DIR, else ./data)")
    parser.add_argument("--frames", type=int, default=64, help="frames scored from the start of each demo")
    args = parser.parse_args()
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    torch.set_num_threads(1)
    data = get_task("kitchen_complete").load_dataset(args.data_dir)  # the training reader, same missing-file error
    out = {"task": "kitchen_complete", "frames_per_demo": args.frames,
           "action_variance_per_dim": float(data.arrays["action"].var(axis=0).mean()), "mse": {}}
    for spec in args.policies:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"policy must be NAME=CHECKPOINT_DIR, got {spec!r}")
        out["mse"][name] = teacher_forced_mse(PolicyAgent.load(path), data, args.frames)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
