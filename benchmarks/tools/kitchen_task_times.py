"""Step at which each kitchen task is first completed, per seed, for a diffusion checkpoint (a
diagnostic, not a score: where in the 280 steps the policy stops making progress).

    MUJOCO_GL=egl python benchmarks/tools/kitchen_task_times.py CHECKPOINT SEED [SEED ...] \
        [--task kitchen_complete|kitchen_complete_abs] [--n-action-steps N] [--noise-scale S] [--out times.json]

Seeds are replayed as ``python -m dp_gym.benchmark`` runs them (DDIM-10, sampler noise keyed by
the seed, ``deterministic=True``). ``--task`` must be the task the checkpoint was trained on: both
kitchen tasks have 9-d actions (velocities / joint position targets), so it cannot be inferred.
"""

from __future__ import annotations

import argparse
import json

import torch

from dp_gym.agent import PolicyAgent
from dp_gym.benchmark import with_action_horizon
from dp_gym.checkpoint import load_policy
from dp_gym.episodes import Episode, RolloutCallback, Step, rollout
from dp_gym.tasks import get_task


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("seeds", type=int, nargs="+")
    p.add_argument("--task", default="kitchen_complete", choices=["kitchen_complete", "kitchen_complete_abs"])
    p.add_argument("--n-action-steps", type=int, default=None)
    p.add_argument("--noise-scale", type=float, default=1.0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    policy, _ = load_policy(a.checkpoint, "cpu")
    if a.n_action_steps is not None:
        policy.config = with_action_horizon(policy, a.n_action_steps)
    agent = PolicyAgent(policy)
    agent.sample_kwargs.update(sampler="ddim", num_inference_steps=10, noise_scale=a.noise_scale)
    env = get_task(a.task).make_env()
    rows = []

    def first_completions(episode: Episode, step: Step) -> None:
        for task in step.info["completed_tasks"]:
            rows[-1]["first_completed_step"].setdefault(task, episode.length)

    def report(episode: Episode) -> None:
        rows[-1]["steps"] = episode.length
        print(json.dumps(rows[-1]), flush=True)

    hooks = RolloutCallback(on_episode_start=lambda ep: rows.append({"seed": ep.seed, "first_completed_step": {}}),
                            on_step=first_completions, on_episode_end=report)
    rollout(agent, env, a.seeds, deterministic=True, callbacks=[hooks])
    env.close()
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"task": a.task, "checkpoint": a.checkpoint, "n_action_steps": a.n_action_steps, "noise_scale": a.noise_scale,
                       "episodes": rows}, f, indent=1)


if __name__ == "__main__":
    main()
