"""Generate robomimic-format demonstrations with the scripted experts.

    python -m dp_gym.collect --task lift --episodes 220 --out runs/demos/lift.hdf5 --workers 1

Runs the expert from the seeded initial states ``seed_start .. seed_start + episodes - 1`` (the
episode seed seeds both the env reset and the expert's randomisation, so a run is reproducible),
keeps only the successful episodes, writes them (``actions`` = OSC delta actions, ``actions_abs`` =
the equivalent absolute pose actions ``[pos, axis-angle, gripper]`` in robomimic's convention,
``states``, low-dim ``obs``/``next_obs``, optional camera images) and prints the expert's own
success rate. ``--workers N`` uses N processes started with ``spawn`` (safe with GL contexts).
``--stats-json`` writes the per-episode outcomes.

``--action-noise SIGMA`` injects noise DART-style (Laskey et al., 2017): the env executes the
expert's action plus Gaussian noise (standard deviation SIGMA in action units, on the pose
dimensions, not the gripper) while the dataset stores the expert's clean action. The closed-loop
expert then corrects the perturbation, so the demos show how to recover from states slightly off
the expert's path, which plain scripted demos never visit. Under noise the absolute actions are
not stored: the controller goal after a noisy step is not the expert's command.

``--post-success-steps N`` keeps recording the expert for N steps after the task first succeeds
(default 0: the demo ends at its first success, as the evaluation env terminates there). Why: in
Can the success check also needs the gripper clear of the can, which the expert reaches two or
three steps into opening the gripper, so demos that stop there hold almost no frame of an open
gripper next to a placed can, and a policy that reaches that state (e.g. after lowering the can
further than any demo) has never seen the retreat that follows. An episode is kept only if it is
still a success at its last recorded step; its HDF5 attrs record ``first_success_step``.

``--drop-prob P`` (Can only) makes the expert drop the can in a fraction P of the episodes and pick
it up again: once the can is held and lifted (a random 3-15 cm above the grasp, or at the start of
the transit to the bin), the env executes an open gripper for 8 steps while the dataset keeps the
expert's own (closed) gripper action, and the expert, seeing the can away from its fingers, plans a
new pick. Why: a policy trained on flawless scripted demos that lets the can slip flies on to the
bin empty-handed, because no demo ever shows an empty gripper above the table after lift-off
(robomimic's human demos contain such re-grasps). The step of the drop is in the demo's attrs
(``drop_step``; absent when no drop was made). The pose of every executed action is still the
expert's, so ``actions_abs`` holds the controller's goal pose with the expert's gripper command, as
``actions`` does.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dp_gym.checkpoint import atomic_write_json
from dp_gym.utils.cli import command_line, option, parse_config, run_cli

__all__ = ["EpisodeResult", "CollectConfig", "run_expert_episode", "collect", "main"]


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    length: int
    strategy: str
    data: dict[str, Any] | None = None  # arrays of a successful episode (when recording)
    first_success_step: int | None = None  # 1-based step of the first success (None: never)
    drop_step: int | None = None  # 1-based first step of a forced drop (--drop-prob; None: none)

# Forced drop (--drop-prob): how long the gripper is held open, and the lift height range.
DROP_STEPS = 8
DROP_HEIGHT = (0.03, 0.15)


_WORKER: dict[str, Any] = {}


def _get_env_and_expert_cls(expert: str, cameras: tuple[str, ...], image_size: int):
    key = (expert, cameras, image_size)
    if _WORKER.get("key") != key:
        from dp_gym.envs.robosuite_env import RobosuiteEnv
        from dp_gym.experts import EXPERTS, TASK_OF_EXPERT

        if "env" in _WORKER:
            _WORKER["env"].close()
        _WORKER.update(key=key, env=RobosuiteEnv(TASK_OF_EXPERT[expert], cameras=cameras, image_size=image_size),
                       cls=EXPERTS[expert])
    return _WORKER["env"], _WORKER["cls"]


def run_expert_episode(expert: str, seed: int, record: bool = True, cameras: tuple[str, ...] = (),
                       image_size: int = 84, action_noise: float = 0.0, post_success_steps: int = 0,
                       drop_prob: float = 0.0) -> EpisodeResult:
    """One expert episode from ``reset(seed=seed)`` (env and expert cached per process).

    ``action_noise`` > 0 perturbs the executed pose actions (see the module docstring); the
    recorded ``actions`` stay the expert's own. ``post_success_steps`` > 0 keeps stepping the
    expert that many steps past the first success (also past the time limit); the episode counts
    as a success only if the task is still solved at its last step. ``drop_prob`` > 0 (Can only)
    forces a drop of the held can in that fraction of the episodes (see the module docstring)."""
    from dp_gym.envs.robosuite_env import DELTA_DIM
    from dp_gym.utils.rotation import rot6d_to_axis_angle

    if not (np.isfinite(action_noise) and action_noise >= 0):
        raise ValueError(f"action_noise must be a finite number >= 0, got {action_noise}")
    if int(post_success_steps) != post_success_steps or post_success_steps < 0:
        raise ValueError(f"post_success_steps must be an integer >= 0, got {post_success_steps}")
    if not (np.isfinite(drop_prob) and 0 <= drop_prob <= 1):
        raise ValueError(f"drop_prob must be a number in [0, 1], got {drop_prob}")
    if drop_prob > 0 and expert != "can":
        raise ValueError(f"drop_prob needs an expert that re-picks a dropped object: only 'can', got {expert!r}")
    env, cls = _get_env_and_expert_cls(expert, tuple(cameras), image_size)
    obs, info = env.reset(seed=seed)
    ex = cls(env, seed=seed)
    ex.reset()
    # Its own stream, so the expert's randomisation is the same with and without noise.
    noise_rng = np.random.default_rng([seed, 0xDA27])
    pose_dims = np.ones(DELTA_DIM * env.n_arms, bool)
    pose_dims[DELTA_DIM - 1::DELTA_DIM] = False  # grippers stay clean
    # Its own stream too: whether and where this episode drops the can.
    drop_rng = np.random.default_rng([seed, 0xD809])
    drop_planned = bool(drop_rng.random() < drop_prob) if drop_prob > 0 else False
    drop_height = float(drop_rng.uniform(*DROP_HEIGHT))
    drop_step = None
    # Under noise the controller goal after a step is not the expert's command: no abs actions. A
    # forced drop changes only the executed gripper, so the goal pose is the expert's and the abs
    # action gets the expert's gripper command, like the stored delta action.
    record_abs = action_noise == 0
    actions, abs_actions, states, rewards = [], [], [], []
    success, t, first_success = False, 0, None
    while True:
        t += 1
        if record:
            states.append(env.get_state())
        a = ex.act()
        executed = a
        if action_noise > 0:
            executed = a + np.where(pose_dims, noise_rng.normal(0.0, action_noise, a.shape), 0.0)
            executed = np.clip(executed, -1.0, 1.0).astype(np.float32)
        if drop_planned and drop_step is None and ex.phase.name in ("lift", "transit") and ex.gripper_closed_on_object():
            if ex.phase.name == "transit" or ex.eef_pos[2] - ex.grasp_z > drop_height:
                drop_step = t
        if drop_step is not None and t < drop_step + DROP_STEPS:
            executed = np.array(executed, dtype=np.float32)
            executed[DELTA_DIM - 1::DELTA_DIM] = -1.0  # open every gripper; the demo keeps the expert's action
        obs, reward, terminated, truncated, info = env.step(executed)
        if record:
            actions.append(a)
            rewards.append(reward)
            if record_abs:
                abs10 = info["abs_action"].reshape(env.n_arms, 10)
                grip = np.asarray(a, np.float32).reshape(env.n_arms, DELTA_DIM)[:, DELTA_DIM - 1:]
                abs_actions.append(np.concatenate([abs10[:, :3], rot6d_to_axis_angle(abs10[:, 3:9]), grip], -1).reshape(-1))
        success = bool(info["is_success"])
        if success and first_success is None:
            first_success = t
        if first_success is not None:
            if t >= first_success + post_success_steps:
                break
        elif terminated or truncated:
            break
    data = None
    if record and success:
        # Like robomimic's released datasets (made by its states-to-obs conversion), the stored
        # observations are computed from the stored states, so replaying a state reproduces its
        # observation exactly. robosuite's live observations lag the state by one 2 ms physics
        # substep (they are read before the kinematics are recomputed): at most ~1 mm here.
        from dp_gym.data.robomimic import regenerate_observations

        all_states = np.concatenate([np.asarray(states), env.get_state()[None]], axis=0)
        regen = regenerate_observations(env, all_states)
        obs_arr = {k: v[:-1] for k, v in regen.items()}
        next_obs = {k: v[1:] for k, v in regen.items()}
        dones = np.zeros(t, dtype=np.int64)
        dones[-1] = 1
        data = dict(obs=obs_arr, next_obs=next_obs, actions=np.asarray(actions, np.float32),
                    actions_abs=np.asarray(abs_actions, np.float32) if record_abs else None,
                    states=np.asarray(states),
                    rewards=np.asarray(rewards, np.float64), dones=dones)
    return EpisodeResult(seed=seed, success=success, length=t, strategy=ex.strategy, data=data,
                         first_success_step=first_success, drop_step=drop_step)


def _worker_run(args: tuple) -> EpisodeResult:
    return run_expert_episode(*args)


def collect(expert: str, seeds: list[int], workers: int = 1, record: bool = True, cameras: tuple[str, ...] = (),
            image_size: int = 84, progress: bool = True, action_noise: float = 0.0,
            post_success_steps: int = 0, drop_prob: float = 0.0) -> list[EpisodeResult]:
    """Run the expert on each seed (in ``workers`` spawned processes); results in seed order."""
    from tqdm import tqdm

    from dp_gym.experts import EXPERTS

    if expert not in EXPERTS:
        raise ValueError(f"unknown expert {expert!r}; available: {sorted(EXPERTS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    jobs = [(expert, s, record, tuple(cameras), image_size, action_noise, post_success_steps, drop_prob) for s in seeds]
    results: list[EpisodeResult] = []
    bar = tqdm(total=len(jobs), desc=f"{expert} expert", unit="ep", disable=not progress)

    def update(r: EpisodeResult) -> None:
        results.append(r)
        n_ok = sum(x.success for x in results)
        bar.set_postfix(success=f"{n_ok}/{len(results)}")
        bar.update(1)

    if workers == 1:
        for job in jobs:
            update(_worker_run(job))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for r in pool.imap_unordered(_worker_run, jobs):
                update(r)
    bar.close()
    return sorted(results, key=lambda r: r.seed)


def _env_args(expert: str, cameras: tuple[str, ...], image_size: int, action_noise: float = 0.0,
              post_success_steps: int = 0, drop_prob: float = 0.0) -> dict[str, Any]:
    from dp_gym.envs.robosuite_env import CONTROL_FREQ, ROBOSUITE_TASKS
    from dp_gym.experts import TASK_OF_EXPERT

    spec = ROBOSUITE_TASKS[TASK_OF_EXPERT[expert]]
    kwargs: dict[str, Any] = {
        "robots": list(spec.robots), "control_freq": CONTROL_FREQ, "controller": "OSC_POSE",
        "input_ref_frame": "world", "reward_shaping": False, "use_object_obs": True,
        "use_camera_obs": bool(cameras), **spec.env_kwargs,
    }
    if cameras:
        kwargs.update(camera_names=list(cameras), camera_heights=image_size, camera_widths=image_size)
    return {"env_name": spec.env_name, "type": 1, "env_kwargs": kwargs,
            "dp_gym": {"expert": expert, "actions": "delta", "action_noise": action_noise,
                       "post_success_steps": post_success_steps, "drop_prob": drop_prob,
                       "actions_abs": None if action_noise > 0 else "pos+axis_angle+gripper (world)"}}


@dataclass
class CollectConfig:
    """Every ``python -m dp_gym.collect`` option; each field is a flag (``--field-name``)."""

    task: str = option(help="the expert; square_loose: Square with a looser alignment test before insertion",
                       choices=("lift", "can", "square", "square_loose"))
    episodes: int = option(help="number of expert attempts (seeds)")
    seed_start: int = option(0, "first seed; the episodes use seed_start .. seed_start + episodes - 1")
    out: str | None = option(None, "HDF5 file for the successful episodes; unset: only report the success rate")
    workers: int = option(1, "processes (spawned)")
    cameras: str = option("", "comma-separated cameras to record, e.g. agentview,robot0_eye_in_hand")
    image_size: int = option(84, "camera image height and width")
    action_noise: float = option(0.0, "std of Gaussian noise added to the executed pose actions (DART); stored actions stay clean")
    post_success_steps: int = option(0, "keep recording the expert this many steps after the first success (see the module docstring)")
    drop_prob: float = option(0.0, "can only: fraction of episodes in which the held can is dropped and picked up again (see above)")
    stats_json: str | None = option(None, "write the per-episode outcomes to this JSON file")
    progress: bool = option(True, "progress bar", invert="--no-progress")

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.workers < 1 or self.image_size < 1:
            raise ValueError(f"--workers and --image-size must be >= 1, got {self.workers} and {self.image_size}")
        if not (np.isfinite(self.action_noise) and self.action_noise >= 0):
            raise ValueError(f"--action-noise must be a finite number >= 0, got {self.action_noise}")
        if self.post_success_steps < 0:
            raise ValueError(f"--post-success-steps must be >= 0, got {self.post_success_steps}")
        if not (np.isfinite(self.drop_prob) and 0 <= self.drop_prob <= 1):
            raise ValueError(f"--drop-prob must be in [0, 1], got {self.drop_prob}")
        if self.drop_prob > 0 and self.task != "can":
            raise ValueError(f"--drop-prob is implemented for --task can only, got {self.task}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_config(CollectConfig, argv, description=__doc__, prog="python -m dp_gym.collect")
    cameras = tuple(c for c in args.cameras.split(",") if c)
    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    t0 = time.time()
    results = collect(args.task, seeds, workers=args.workers, record=args.out is not None, cameras=cameras,
                      image_size=args.image_size, progress=args.progress, action_noise=args.action_noise,
                      post_success_steps=args.post_success_steps, drop_prob=args.drop_prob)
    wall = time.time() - t0
    ok = [r for r in results if r.success]
    rate = len(ok) / len(results)
    strategies = sorted({r.strategy for r in results})
    by_strategy = {s: [sum(r.success for r in results if r.strategy == s), sum(r.strategy == s for r in results)]
                   for s in strategies}
    print(f"{args.task}: expert success {len(ok)}/{len(results)} = {rate:.3f} on seeds "
          f"{seeds[0]}..{seeds[-1]}; per strategy (success, attempts): {by_strategy}; "
          f"mean length of successes {np.mean([r.length for r in ok]) if ok else float('nan'):.1f}; {wall:.0f} s")
    dropped = [r for r in results if r.drop_step is not None]
    if args.drop_prob > 0:
        print(f"forced drops in {len(dropped)} episodes, {sum(r.success for r in dropped)} of them recovered to a success")
    if args.out is not None:
        if not ok:
            print("no successful episode: nothing written", file=sys.stderr)
            return 1
        from dp_gym.data.robomimic import RobomimicEpisode, write_robomimic_hdf5

        episodes = (RobomimicEpisode(obs=r.data["obs"], next_obs=r.data["next_obs"], actions=r.data["actions"],
                                     states=r.data["states"], rewards=r.data["rewards"], dones=r.data["dones"],
                                     extras={} if r.data["actions_abs"] is None else {"actions_abs": r.data["actions_abs"]},
                                     attrs={"seed": r.seed, "strategy": r.strategy,
                                            "first_success_step": r.first_success_step,
                                            **({} if r.drop_step is None else {"drop_step": r.drop_step})})
                    for r in ok)
        write_robomimic_hdf5(args.out, episodes, env_args=_env_args(args.task, cameras, args.image_size, args.action_noise,
                                                                args.post_success_steps, args.drop_prob),
                             attrs={"expert_success_rate": rate, "seeds": json.dumps([r.seed for r in ok]),
                                    "strategies": json.dumps([r.strategy for r in ok])})
        print(f"wrote {len(ok)} demos to {args.out}")
    if args.stats_json:
        stats = {"task": args.task, "seeds": [seeds[0], seeds[-1] + 1], "attempts": len(results),
                 "action_noise": args.action_noise, "post_success_steps": args.post_success_steps,
                 "drop_prob": args.drop_prob,
                 "successes": len(ok), "success_rate": rate, "per_strategy": by_strategy, "wall_s": wall,
                 "episodes": [{"seed": r.seed, "success": r.success, "length": r.length, "strategy": r.strategy,
                               "first_success_step": r.first_success_step, "drop_step": r.drop_step}
                              for r in results],
                 "command": command_line("dp_gym.collect", argv)}
        atomic_write_json(Path(args.stats_json), stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
