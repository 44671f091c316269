"""Train, select, score and ship model-zoo entries under dp_gym's evaluation protocol.

The protocol (README, "Evaluation protocol"):

* selection seeds 200000–200049: the only seeds any choice looks at (here: which training seed is
  the median one, the one shipped);
* held-out seeds 300000–300099: evaluated once per final checkpoint, for the reported numbers;
* the paper's test seeds 100000–100049, for comparability (they were also used while the recipes
  were developed, so they are not held out).

Every entry is trained with several training seeds from one fixed recipe (below). ``ship`` scores
each seed's final checkpoint on the selection seeds, ships the median one (not the best; ranked by
success rate, then the task's score, or by the task's score alone where the recipe's ``rank_by``
says so) as float16 weights, and scores every seed on the held-out seeds for the mean and range
across training seeds.
An entry with one training seed (IBC) needs no selection; shipped in float32
(IBC), it is the training checkpoint itself and is scored on the held-out seeds once, by the suite.
The shipped entries themselves are then scored by the zoo suite
(``python -m dp_gym.benchmark --suite zoo``), whose results ``record`` copies into the cards.

    python benchmarks/zoo_protocol.py collect lift_state/diffusion                   # robosuite: scripted demos
    python benchmarks/zoo_protocol.py train kitchen_complete_abs/diffusion --seed 0   # one training
    python benchmarks/zoo_protocol.py score kitchen_complete_abs/diffusion --seed 0   # optional: one seed's scores now
    python benchmarks/zoo_protocol.py ship kitchen_complete_abs/diffusion              # select, score, export
    python -m dp_gym.benchmark --suite zoo --out-dir benchmarks/results/zoo/held_out
    python -m dp_gym.benchmark --suite zoo --seeds 100000:100050 --out-dir benchmarks/results/zoo/paper_seeds
    python benchmarks/zoo_protocol.py record benchmarks/results/zoo/held_out/results.json held_out
    python benchmarks/zoo_protocol.py record benchmarks/results/zoo/paper_seeds/results.json paper_seeds

Runs go to ``runs/zoo/<task>/<policy>/seed<N>``; per-seed scores to
``benchmarks/results/zoo/<task>/<policy>/seed<N>/{selection,held_out}/``.

A card's known failure modes come from its held-out episodes (step limit, how close a dense score
got, kitchen's sub-tasks). For sparse-reward robosuite entries, simulator labels of the failed
seeds join them when ``failure_modes.json`` sits beside the held-out result before ``record``
(the suite's seeds in its batches of 10 envs; square likewise)::

    python benchmarks/tools/robosuite_failure_modes.py --task can zoo:can_state/diffusion 300000:300100 --n-envs 10 \
        --out benchmarks/results/zoo/held_out/can_state/diffusion/failure_modes.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import dp_gym
import torch
from dp_gym.benchmark import read_result, task_score
from dp_gym.paths import dataset_path
from dp_gym.tasks import KITCHEN_COMPLETE_HDF5, PUSHT_ZARR, get_task
from dp_gym.zoo import ZooEntry, export, get_entry, write_card

SELECTION_SEEDS = "200000:200050"
HELD_OUT_SEEDS = "300000:300100"
PAPER_SEEDS = "100000:100050"
SPLITS = ["held_out", "paper_seeds"]  # the seed ranges a card records suite results for, in card order
MACHINE = "a 2-core x86-64 CPU (AVX-512), 1 torch thread, two trainings sharing the machine"
CAN_MACHINE = "a 2-core x86-64 CPU (Intel Xeon, AVX-512), 1 torch thread, other trainings and evaluations sharing the machine"
PUSHT_IMAGE_MACHINE = "a 2-core x86-64 CPU (Intel Xeon, AVX-512), 1 torch thread, two trainings sharing the machine"
PUSHT_OBSNOISE_MACHINE = ("a 2-core x86-64 CPU (AMD EPYC, AVX-512), 1 torch thread; training seeds 0 and 1 side by side, "
                          "seed 2 mostly alone")
IBC_MACHINE = "a 2-core x86-64 CPU (AMD EPYC, AVX-512), 1 torch thread, other trainings and evaluations sharing the machine"
DDIM10 = ["--sampler", "ddim", "--num-inference-steps", "10"]
X0_OBSNOISE = '{"prediction_type": "sample", "obs_noise_std": 0.1}'
IBC_SINGLE = '{"n_counter_examples": 128, "chunked": false}'
X0 = '{"prediction_type": "sample"}'
PUSHT_OBSNOISE = '{"obs_noise_std": 0.02}'
ROBOSUITE_DATA = "runs/data"
LIFT_HDF5, CAN_HDF5, SQUARE_HDF5 = "robosuite/lift.hdf5", "robosuite/can.hdf5", "robosuite/square.hdf5"
LIFT_COLLECT = f"python -m dp_gym.collect --task lift --episodes 210 --seed-start 0 --out {ROBOSUITE_DATA}/{LIFT_HDF5}"
# Can: the expert goes on 30 steps past success and drops + re-grasps the can in 30% of the episodes,
# so the policy sees the release and recoveries it needs.
CAN_COLLECT = (f"python -m dp_gym.collect --task can --episodes 210 --seed-start 0 --post-success-steps 30 --drop-prob 0.3 "
               f"--out {ROBOSUITE_DATA}/{CAN_HDF5}")
SQUARE_COLLECT = f"python -m dp_gym.collect --task square --episodes 230 --seed-start 0 --out {ROBOSUITE_DATA}/{SQUARE_HDF5}"

# The paper's image recipe (UNet 256/512/1024, step embedding 128, batch 64, ~3000 epochs, bf16):
# what pusht_image needs to reach the paper's figure; it needs a GPU (days on a CPU).
PUSHT_IMAGE_GPU_RECIPE = ("python -m dp_gym.train --task pusht_image --policy diffusion --model-size paper --policy-overrides "
                          "'{\"diffusion_step_embed_dim\": 128}' --steps 1116000 --batch-size 64 --lr 1e-4 --warmup-steps 500 "
                          "--checkpoint-every 10000 --keep-every 100000 --val-every 10000 --log-every 1000 --device cuda "
                          "--mixed-precision bf16 --seed 0 --out-dir runs/zoo/pusht_image/diffusion/gpu_seed0 --resume")

# The robosuite recipes share their flags; each adds --task (and --seed / --out-dir when run).
def robosuite_x0_diffusion(steps: int) -> str:
    """The x₀-prediction diffusion flags of a robosuite entry (UNet small, batch 64, lr 1e-4)."""
    return (f"--policy diffusion --model-size small --policy-overrides '{X0}' --steps {steps} --batch-size 64 "
            f"--lr 1e-4 --warmup-steps 200 --checkpoint-every 1000 --val-every 2000 --log-every 100 "
            f"--num-threads 1 --data-dir {ROBOSUITE_DATA}")


ROBOSUITE_X0_DIFFUSION = robosuite_x0_diffusion(12000)
DELTA_BC_SUMMARY = "Explicit behaviour cloning: MLP (3 × 512) regressing a chunk of Ta=8 OSC delta actions from To=2 observations."


def robosuite_bc(task: str, data: str, collect: str, summary: str, **extra) -> dict:
    """The BC recipe of a robosuite entry: MLP 3 × 512, 5000 steps, three training seeds."""
    return dict(train=f"--task {task} --policy bc --model-size medium --steps 5000 --batch-size 64 --checkpoint-every 2500 "
                      f"--val-every 2500 --log-every 500 --num-threads 1 --data-dir {ROBOSUITE_DATA}",
                seeds=[0, 1, 2], benchmark_args=[], data=data, collect=collect, summary=summary, **extra)


def robosuite_ibc(task: str, data: str, collect: str, actions: str, **extra) -> dict:
    """The IBC recipe of a robosuite entry: single-step energy MLP, 6000 steps, one training seed."""
    return dict(train=f"--task {task} --policy ibc --model-size small --n-action-steps 1 --policy-overrides '{IBC_SINGLE}' "
                      f"--steps 6000 --batch-size 64 --checkpoint-every 2000 --val-every 2000 --log-every 500 --num-threads 1 "
                      f"--data-dir {ROBOSUITE_DATA}",
                seeds=[0], benchmark_args=[], data=data, collect=collect,
                summary=f"Implicit BC (energy MLP 2 × 256, InfoNCE, 128 counter-examples), single-step {actions}.", **extra)


# One fixed recipe per entry: the training flags (without --seed / --out-dir), the training seeds,
# the benchmark arguments the entry is scored with, and the dataset it reads. ``finetune`` (steps)
# adds a second stage: that many steps with a fresh learning-rate cycle and EMA from the first
# stage's final checkpoint (``--init-from``), the same flags otherwise.
RECIPES: dict[str, dict] = {
    "pusht_keypoints/diffusion": dict(
        train=f"--task pusht_keypoints --policy diffusion --model-size small --policy-overrides '{PUSHT_OBSNOISE}' --steps 16000 "
              "--batch-size 64 --lr 1e-4 --warmup-steps 500 --checkpoint-every 1000 --keep-every 4000 --val-every 2000 --log-every 200 "
              "--num-threads 1",
        seeds=[0, 1, 2], benchmark_args=DDIM10, data=PUSHT_ZARR, machine=PUSHT_OBSNOISE_MACHINE,
        summary="Diffusion Policy (UNet small, 4.56 M parameters, ε-prediction, To=2 Ta=8 Tp=16) on Push-T from 9 block "
                "keypoints + agent position, trained with Gaussian noise of std 0.02 on the normalised observations; "
                "DDIM-10 sampling."),
    # Push-T from pixels: what one CPU core affords in about two hours per training seed, with a
    # half-width ResNet-18 (a quarter of its parameters: 1.6x the training steps/s, and weights that
    # fit the zoo's size budget) under bf16 autocast (1.5x again on a CPU with bf16 instructions);
    # the card also carries the paper's GPU recipe (PUSHT_IMAGE_GPU_RECIPE).
    "pusht_image/diffusion": dict(
        train="--task pusht_image --policy diffusion --model-size small --policy-overrides '{\"image_encoder_width\": 32}' "
              "--steps 16000 --batch-size 32 --lr 1e-4 --warmup-steps 200 --checkpoint-every 200 --keep-every 1000 "
              "--val-every 1000 --log-every 50 --num-threads 1 --mixed-precision bf16",
        seeds=[0, 1, 2], benchmark_args=DDIM10, data=PUSHT_ZARR, gpu_recipe=PUSHT_IMAGE_GPU_RECIPE,
        rank_by="task_score",  # its decision rule, fixed before it trained, ranks seeds by coverage alone
        machine="a 2-core x86-64 CPU (AMD EPYC, Zen 4, AVX-512 with bf16), 1 torch thread, each training seed beside "
                "the two other training seeds",
        summary="Diffusion Policy (UNet small, ε-prediction, To=2 Ta=8 Tp=16) on Push-T from 96×96 RGB (ResNet-18 at half "
                "width (32-64-128-256 channels), GroupNorm + spatial softmax, 84×84 random crops) + agent position, "
                "trained on a CPU budget (16000 steps of 32, about 20 epochs, under bf16 autocast); DDIM-10 sampling."),
    # The baselines from pixels get the diffusion entry's camera encoder and a smaller budget (5000
    # float32 steps of 32, one torch thread); IBC's ResNet-18 is at quarter width (GroupNorm groups
    # as at half width), which keeps the zoo's weights under 80 MB.
    "pusht_image/bc": dict(
        train="--task pusht_image --policy bc --model-size medium --policy-overrides '{\"image_encoder_width\": 32}' "
              "--steps 5000 --batch-size 32 --lr 1e-4 --warmup-steps 200 --checkpoint-every 200 --keep-every 1000 "
              "--val-every 1000 --log-every 50 --num-threads 1",
        seeds=[0, 1, 2], benchmark_args=[], data=PUSHT_ZARR,
        machine=PUSHT_IMAGE_MACHINE + " (the wall times of seeds 0 and 1 include about 2 minutes paused for speed measurements)",
        summary="Explicit behaviour cloning from 96×96 RGB + agent position: the diffusion entry's camera encoder "
                "(half-width ResNet-18, GroupNorm + spatial softmax, 84×84 random crops) and an MLP (3 × 512) "
                "regressing a chunk of Ta=8 actions (MSE), trained end to end on the same CPU budget."),
    "pusht_image/ibc": dict(
        train="--task pusht_image --policy ibc --model-size small --n-action-steps 1 --policy-overrides "
              "'{\"n_counter_examples\": 128, \"chunked\": false, \"image_encoder_width\": 16, \"group_norm_group_size\": 8}' "
              "--steps 5000 "
              "--batch-size 32 --lr 1e-4 --warmup-steps 200 --checkpoint-every 200 --keep-every 1000 --val-every 1000 "
              "--log-every 50 --num-threads 1",
        seeds=[0], benchmark_args=[], data=PUSHT_ZARR, machine=PUSHT_IMAGE_MACHINE,
        summary="Implicit BC from 96×96 RGB + agent position: the diffusion entry's camera encoder at quarter width "
                "(ResNet-18 with 16-32-64-128 channels) and an energy MLP "
                "(2 × 256) trained with InfoNCE against 128 uniform counter-examples, single-step actions, "
                "derivative-free optimisation at inference."),
    "pusht_keypoints/bc": dict(
        train="--task pusht_keypoints --policy bc --model-size medium --steps 20000 --batch-size 64 --lr 1e-4 "
              "--warmup-steps 500 --checkpoint-every 2000 --val-every 2000 --log-every 500 --num-threads 1",
        seeds=[0, 1, 2], benchmark_args=[], data=PUSHT_ZARR,
        summary="Explicit behaviour cloning: MLP (3 × 512) regressing a chunk of Ta=8 actions from To=2 observations (MSE)."),
    "pusht_keypoints/ibc": dict(
        train="--task pusht_keypoints --policy ibc --model-size small --n-action-steps 1 --policy-overrides "
              f"'{IBC_SINGLE}' --steps 6000 --batch-size 64 --lr 1e-4 --warmup-steps 500 --checkpoint-every 2000 "
              "--val-every 2000 --log-every 500 --num-threads 1",
        seeds=[0], benchmark_args=[], data=PUSHT_ZARR,
        summary="Implicit BC: energy MLP (2 × 256) trained with InfoNCE against 128 uniform counter-examples, "
                "single-step actions, derivative-free optimisation at inference."),
    "kitchen_complete_abs/diffusion": dict(
        train="--task kitchen_complete_abs --policy diffusion --model-size small --policy-overrides "
              f"'{X0_OBSNOISE}' --steps 6000 --batch-size 64 --val-ratio 0 --checkpoint-every 1000 --log-every 100 --num-threads 1",
        seeds=[0, 1, 2], benchmark_args=DDIM10, data=KITCHEN_COMPLETE_HDF5,
        summary="Diffusion Policy (UNet small, x₀-prediction, observation-noise augmentation σ=0.1, To=2 Ta=8 Tp=16) "
                "on D4RL kitchen-complete (19 demos) with joint position targets as actions; DDIM-10 sampling."),
    "kitchen_complete_abs/bc": dict(
        train="--task kitchen_complete_abs --policy bc --model-size medium --steps 20000 --batch-size 64 --val-ratio 0 "
              "--checkpoint-every 5000 --log-every 500 --num-threads 1",
        seeds=[0, 1, 2], benchmark_args=[], data=KITCHEN_COMPLETE_HDF5,
        summary="Explicit behaviour cloning: MLP (3 × 512) regressing a chunk of Ta=8 joint position targets."),
    "kitchen_complete_abs/ibc": dict(
        train="--task kitchen_complete_abs --policy ibc --model-size small --n-action-steps 1 --policy-overrides "
              f"'{IBC_SINGLE}' --steps 6000 --batch-size 64 --val-ratio 0 --checkpoint-every 2000 --log-every 500 --num-threads 1",
        seeds=[0], benchmark_args=[], data=KITCHEN_COMPLETE_HDF5,
        summary="Implicit BC (energy MLP 2 × 256, InfoNCE, 128 counter-examples), single-step joint position targets."),
    # robosuite: the demonstrations are our scripted experts' (robomimic layout), made by the
    # ``collect`` command into the writable data directory ROBOSUITE_DATA before training.
    "lift_state/diffusion": dict(
        train=f"--task lift_state {robosuite_x0_diffusion(6000)}",
        seeds=[0, 1, 2], benchmark_args=DDIM10, data=LIFT_HDF5, collect=LIFT_COLLECT,
        summary="Diffusion Policy (UNet small, x₀-prediction, To=2 Ta=8 Tp=16) on robosuite Lift from low-dim state "
                "(eef pose, gripper, object), OSC delta actions; DDIM-10 sampling."),
    "lift_state/bc": robosuite_bc("lift_state", LIFT_HDF5, LIFT_COLLECT, DELTA_BC_SUMMARY),
    # float16 weights scored 0.39 on the held-out seeds against the float32 checkpoint's 0.49 [0.39, 0.59]
    "lift_state/ibc": robosuite_ibc("lift_state", LIFT_HDF5, LIFT_COLLECT, "OSC delta actions", weights_dtype="float32"),
    "can_state/diffusion": dict(
        train=f"--task can_state {robosuite_x0_diffusion(24000)}", finetune=6000, seeds=[0, 1, 2], benchmark_args=DDIM10,
        data=CAN_HDF5, collect=CAN_COLLECT, machine=CAN_MACHINE,
        summary="Diffusion Policy (UNet small, x₀-prediction, To=2 Ta=8 Tp=16) on robosuite Can from low-dim state, OSC "
                "delta actions, trained 24000 steps then 6000 more with a fresh learning-rate cycle; DDIM-10 sampling."),
    "can_state/bc": robosuite_bc("can_state", CAN_HDF5, CAN_COLLECT, DELTA_BC_SUMMARY, machine=CAN_MACHINE),
    "can_state/ibc": robosuite_ibc("can_state", CAN_HDF5, CAN_COLLECT, "OSC delta actions", weights_dtype="float32", machine=CAN_MACHINE),
    "square_state_abs/diffusion": dict(
        train=f"--task square_state_abs {ROBOSUITE_X0_DIFFUSION}", seeds=[0, 1, 2], benchmark_args=DDIM10,
        data=SQUARE_HDF5, collect=SQUARE_COLLECT,
        summary="Diffusion Policy (UNet small, x₀-prediction, To=2 Ta=8 Tp=16) on robosuite Square from low-dim state "
                "with absolute end-effector pose actions (position + rot6d + gripper); DDIM-10 sampling."),
    "square_state_abs/bc": robosuite_bc("square_state_abs", SQUARE_HDF5, SQUARE_COLLECT,
                                        "Explicit behaviour cloning: MLP (3 × 512) regressing a chunk of Ta=8 absolute pose actions."),
    "square_state_abs/ibc": robosuite_ibc("square_state_abs", SQUARE_HDF5, SQUARE_COLLECT, "absolute pose actions",
                                          weights_dtype="float32", machine=IBC_MACHINE),
}


def run_dir(name: str, seed: int) -> Path:
    return Path("runs/zoo") / name / f"seed{seed}"


def stage_dirs(name: str, seed: int) -> list[Path]:
    """The run folders of one seed's training stages, in order; the last one is ``run_dir``."""
    out = run_dir(name, seed)
    return ([out.with_name(out.name + "_stage1")] if "finetune" in RECIPES[name] else []) + [out]


def stage_commands(name: str, seed: int) -> list[str]:
    """The training commands of one seed, in order; the last one writes ``run_dir``."""
    recipe = RECIPES[name]
    if "finetune" not in recipe:
        return [f"python -m dp_gym.train {recipe['train']} --seed {seed} --out-dir {run_dir(name, seed)} --resume"]
    first, out = stage_dirs(name, seed)
    argv = shlex.split(recipe["train"])
    argv[argv.index("--steps") + 1] = str(recipe["finetune"])
    for flag in ("--policy-overrides", "--model-size"):  # the checkpoint's config fixes the policy
        if flag in argv:
            del argv[argv.index(flag):argv.index(flag) + 2]
    return [f"python -m dp_gym.train {recipe['train']} --seed {seed} --out-dir {first} --resume",
            f"python -m dp_gym.train {shlex.join(argv)} --init-from {first}/checkpoints/latest --seed {seed} --out-dir {out} --resume"]


def train_command(name: str, seed: int) -> str:
    return " && ".join(stage_commands(name, seed))


def total_steps(name: str) -> int:
    argv = shlex.split(RECIPES[name]["train"])
    return int(argv[argv.index("--steps") + 1]) + RECIPES[name].get("finetune", 0)


def needs_selection(name: str) -> bool:
    """A single training seed needs no choice, so it is not scored on the selection seeds."""
    return len(RECIPES[name]["seeds"]) > 1


def scored_by_suite(name: str) -> bool:
    """A single training seed shipped in float32 is the training checkpoint itself: its held-out
    score is the zoo suite's (evaluated once), which ``record`` copies into the seed spread."""
    return not needs_selection(name) and RECIPES[name].get("weights_dtype") == "float32"


def spread(per_seed_results: dict[str, dict]) -> dict:
    """The card's across-training-seeds summary from each seed's held-out result."""
    vals = [r["success_rate"] for r in per_seed_results.values()]
    return {"seeds": HELD_OUT_SEEDS, "metric": "success rate", "per_seed": {s: r["success_rate"] for s, r in per_seed_results.items()},
            "mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals),
            "per_seed_results": {s: {k: v for k, v in r.items() if k in ("mean_max_reward", "success_rate", "success_ci95", "p1", "p2", "p3", "p4")}
                                 for s, r in per_seed_results.items()}}


def score_dir(name: str, seed: int, split: str) -> Path:
    return Path("benchmarks/results/zoo") / name / f"seed{seed}" / split


def evaluate(name: str, seed: int, split: str, seeds: str) -> dict:
    """Score one training seed's final checkpoint once; a finished score is read back, not re-run."""
    out = score_dir(name, seed, split)
    if not (out / "results.json").is_file():
        task, policy = name.split("/")
        cmd = [sys.executable, "-m", "dp_gym.benchmark", "--task", task, "--policy", f"{policy}_seed{seed}={run_dir(name, seed)}/checkpoints/latest",
               *RECIPES[name]["benchmark_args"], "--seeds", seeds, "--n-envs", "10", "--videos", "0", "--latency-repeats", "3",
               "--num-threads", "1", "--out-dir", str(out)]
        subprocess.run(cmd, check=True)
    return read_result(out)


def score(r: dict) -> tuple[float, float]:
    """What ranks checkpoints: success rate, then the task's score (p_K for kitchen)."""
    return (r["success_rate"], task_score(r)[1])


def rank_by(name: str) -> str:
    """How an entry's training seeds are ranked: ``"score"`` (the default) or ``"task_score"``."""
    rule = RECIPES[name].get("rank_by", "score")
    if rule not in ("score", "task_score"):
        raise ValueError(f"{name}: rank_by must be 'score' or 'task_score', got {rule!r}")
    return rule


def median_seed(name: str, selection: dict[int, dict]) -> int:
    """The training seed an entry ships: the median of its seeds' selection results, ranked by
    ``score`` or, where the recipe says ``rank_by="task_score"``, by the task's score alone (the
    lower middle of an even count; ties keep the seeds' order, lowest first)."""
    rank = (lambda r: task_score(r)[1]) if rank_by(name) == "task_score" else score
    ranked = sorted(sorted(selection), key=lambda s: rank(selection[s]))
    return ranked[(len(ranked) - 1) // 2]


def data_digest(rel: str, data_dir: str | None) -> str:
    """SHA-256 of a dataset file, or of a directory store's sorted '<sha256>  <path>' lines."""
    path = dataset_path(rel, data_dir)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    lines = sorted(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(path).as_posix()}" for f in path.rglob("*") if f.is_file())
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


def wall_minutes(name: str, seed: int) -> float:
    """Training wall time of one seed, every stage together. A log whose clock restarts at a resume
    (written by a dp_gym that counted ``wall_s`` from zero in a resumed process) adds up its segments."""
    total = 0.0
    for d in stage_dirs(name, seed):
        walls = [json.loads(line).get("wall_s", 0.0) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        total += sum(w for w, after in zip(walls, [*walls[1:], 0.0]) if after < w)  # each segment's last value
    return round(total / 60, 1)


def collect(name: str) -> None:
    """Make an entry's demonstrations with the scripted expert unless the file is already there."""
    recipe = RECIPES[name]
    if "collect" not in recipe:
        raise SystemExit(f"{name} reads a real dataset ({recipe['data']}); there is nothing to collect")
    if not (Path(ROBOSUITE_DATA) / recipe["data"]).is_file():
        subprocess.run(shlex.split(recipe["collect"]), check=True)


def ship(name: str, data_dir: str | None) -> ZooEntry:
    recipe = RECIPES[name]
    if data_dir is None and "collect" in recipe:
        data_dir = ROBOSUITE_DATA
    task, policy = name.split("/")
    steps = total_steps(name)
    last_stage = recipe.get("finetune") or steps
    done = [s for s in recipe["seeds"] if json.loads((run_dir(name, s) / "checkpoints/latest/config.json").read_text()).get("train_step") == last_stage]
    if done != recipe["seeds"]:
        raise SystemExit(f"{name}: training seeds {sorted(set(recipe['seeds']) - set(done))} have not finished {steps} steps")
    selection = {s: evaluate(name, s, "selection", SELECTION_SEEDS) for s in done} if needs_selection(name) else {}
    by_task_score = rank_by(name) == "task_score"
    shipped = median_seed(name, selection) if selection else done[(len(done) - 1) // 2]
    held_out = {} if scored_by_suite(name) else {s: evaluate(name, s, "held_out", HELD_OUT_SEEDS) for s in done}
    task_txt = ", ".join(f"seed {s}: {metric} {value:.3f}" for s in selection for metric, value in [task_score(selection[s])])
    if by_task_score:
        sel_txt = task_txt
    else:
        sel_txt = ", ".join(f"seed {s}: success {selection[s]['success_rate']:.2f}" for s in selection)
        if len({selection[s]["success_rate"] for s in selection}) < len(selection):  # ties: ranked by the task's score
            sel_txt += "; ties ranked by " + task_txt
            if len({score(selection[s]) for s in selection}) < len(selection):  # sorted() is stable: the seeds' order decides
                sel_txt += ", then by training seed, lowest first"
    sample = {"sampler": "ddim", "num_inference_steps": 10} if "--sampler" in recipe["benchmark_args"] else None
    card = {
        "summary": recipe["summary"],
        "benchmark_args": recipe["benchmark_args"],
        "data": {"file": recipe["data"], "sha256": data_digest(recipe["data"], data_dir),
                 "description": f"our scripted expert's demonstrations, made by `{recipe['collect']}`" if "collect" in recipe
                                else "the real demonstrations (see the README's Data section)"},
        "training": {"command": train_command(name, shipped), "seeds": done, "steps": steps, "machine": recipe.get("machine", MACHINE),
                     "wall_minutes": {str(s): wall_minutes(name, s) for s in done}, "shipped_seed": shipped,
                     "shipped_because": f"median of the training seeds on the selection seeds {SELECTION_SEEDS} "
                                        f"({sel_txt})" if selection else "the only training seed"},
        "protocol": {"selection_seeds": SELECTION_SEEDS, "held_out_seeds": HELD_OUT_SEEDS, "paper_seeds": PAPER_SEEDS},
        "training_seed_spread": spread({str(s): r for s, r in held_out.items()}) if held_out else None,  # else: record fills it
        "results": [],
        **({"gpu_recipe": {"command": recipe["gpu_recipe"], "note": "The paper's recipe for this task, for a GPU (not run for this entry)"}}
           if "gpu_recipe" in recipe else {}),
        "versions": {"dp_gym": dp_gym.__version__, "torch": torch.__version__},
    }
    entry = export(run_dir(name, shipped) / "checkpoints/latest", task, policy, sample_overrides=sample, card=card, data_dir=data_dir,
                   weights_dtype=recipe.get("weights_dtype", "float16"))
    print(f"shipped {name} (training seed {shipped}) to {entry.path}")
    return entry


def failure_modes(per_episode: dict, seeds: str, max_steps: int | None = None, labels: dict | None = None) -> list[str]:
    """How the failed episodes of one scored run ended, from its per-episode outcomes: how many ran
    to the step limit, how close a dense score (Push-T's coverage) got, the sub-tasks a count task
    (kitchen) got through, and for sparse-reward tasks the simulator's labels when ``labels`` (the
    failed seeds' entries of a ``benchmarks/tools/robosuite_failure_modes.py --out`` file, as
    :func:`failure_labels` gives them) has them."""
    n = len(per_episode["success"])
    failed = [i for i in range(n) if per_episode["success"][i] is False]
    errored = sum(ok is None for ok in per_episode["success"])  # the rollout raised: no outcome
    if not failed:
        return [f"no failed episode on seeds {seeds}" + (f" ({errored} raised an error)" if errored else "")]
    head = f"{len(failed)} of {n} episodes on seeds {seeds} fail" + (f" ({errored} more raised an error)" if errored else "")
    if max_steps is not None and "length" in per_episode:
        at_limit = sum(per_episode["length"][i] >= max_steps for i in failed)
        head += f", {'all' if at_limit == len(failed) else f'{at_limit} of them'} at the {max_steps}-step limit"
    if "completed" in per_episode:  # count tasks (kitchen): how many sub-tasks the failures got through
        counts = [per_episode["completed"][i] for i in failed]
        return [head + ": " + ", ".join(f"{counts.count(k)} stop after {k} of the tasks" for k in sorted(set(counts)))]
    rewards = [per_episode["max_reward"][i] for i in failed]
    if any(rewards):  # a dense score says how close the failures came
        near, close = sum(r >= 0.97 for r in rewards), sum(0.8 <= r < 0.97 for r in rewards)
        return [head + f"; best score reached: {near} at 0.97 or more (within 3% of the success threshold), {close} from 0.8 "
                f"to 0.97, {len(rewards) - near - close} below 0.8"]
    lines = [head + " (the reward is sparse: 0 until success)"]
    if labels is not None:
        modes = [ep["mode"] for ep in labels["episodes"] if ep["mode"] != "success"]
        n_envs = labels.get("n_envs", 1)
        how = (f"replays the suite's episodes in its batches of {n_envs} envs" if n_envs > 1 else "replays each failed seed alone")
        text = (f"how they end, from the simulator (`benchmarks/tools/robosuite_failure_modes.py` {how}; the labels are "
                "defined there): " + ", ".join(f"{modes.count(m)} {m}" for m in sorted(set(modes), key=lambda m: (-modes.count(m), m))))
        if len(modes) < len(labels["episodes"]):  # float rounding differs between the two runs
            text += (f"; {len(labels['episodes']) - len(modes)} succeeded when replayed (float rounding differs from the "
                     "suite's run with the batch size and the CPU, and small differences grow over a contact-rich episode)")
        lines.append(text)
    return lines


def failure_labels(result_dir: Path, per_episode_seeds: list[int], per_episode: dict) -> dict | None:
    """The simulator labels of a scored run's failed episodes, from ``failure_modes.json`` beside its
    ``results.json`` (labels of the failed seeds or of all of them); every failed seed must have one."""
    path = result_dir / "failure_modes.json"
    if not path.is_file():
        return None
    labels = json.loads(path.read_text())
    by_seed = {ep["seed"]: ep for ep in labels["episodes"]}
    failed = [s for s, ok in zip(per_episode_seeds, per_episode["success"]) if ok is False]
    missing = [s for s in failed if s not in by_seed]
    if missing:
        raise ValueError(f"{path}: no label for the failed seeds {missing}")
    return {**labels, "episodes": [by_seed[s] for s in failed]}


def record(results_json: str, split: str) -> None:
    """Copy a zoo-suite result (float16 entries as shipped) into each entry's card; the held-out
    split also gives the card's known failure modes."""
    rec = json.loads(Path(results_json).read_text())
    for task, row in rec["results"].items():
        for policy, r in row.items():
            entry = get_entry(f"{task}/{policy}")
            card = entry.card
            card["results"] = [x for x in card.get("results", []) if x.get("split") != split]
            card["results"].append({"split": split, "seeds": rec["seeds"], "source": results_json, **r})
            card["results"].sort(key=lambda x: SPLITS.index(x["split"]))  # one order, whichever is recorded first
            if split == "held_out" and scored_by_suite(f"{task}/{policy}"):
                card["training_seed_spread"] = spread({str(card["training"]["shipped_seed"]): r})
            if split == "held_out":
                result_dir = Path(results_json).parent / task / policy
                full = json.loads((result_dir / "results.json").read_text())["results"][policy]
                labels = failure_labels(result_dir, full["seeds"], full["per_episode"]) if "seeds" in full else None
                card["failure_modes"] = failure_modes(full["per_episode"], rec["seeds"], get_task(task).max_episode_steps, labels)
            write_card(entry, card)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="run one training seed of an entry's recipe")
    t.add_argument("entry", choices=sorted(RECIPES))
    t.add_argument("--seed", type=int, required=True)
    c = sub.add_parser("collect", help="make an entry's scripted demonstrations (robosuite entries)")
    c.add_argument("entry", choices=sorted(RECIPES))
    e = sub.add_parser("score", help="score one finished training seed on the selection and held-out seeds "
                                     "(what ship does for every seed; ship then reads the scores back)")
    e.add_argument("entry", choices=sorted(RECIPES))
    e.add_argument("--seed", type=int, required=True)
    s = sub.add_parser("ship", help="score every training seed, ship the median one")
    s.add_argument("entry", choices=sorted(RECIPES))
    s.add_argument("--data-dir", default=None)
    r = sub.add_parser("record", help="copy a zoo-suite results.json into the cards")
    r.add_argument("results_json")
    r.add_argument("split", choices=SPLITS)
    a = p.parse_args()
    if a.cmd == "train":
        for cmd in stage_commands(a.entry, a.seed):
            subprocess.run(shlex.split(cmd), check=True)
    elif a.cmd == "score":
        if scored_by_suite(a.entry):
            raise SystemExit(f"{a.entry} has one training seed shipped as is: ship it, the zoo suite scores it")
        if needs_selection(a.entry):
            evaluate(a.entry, a.seed, "selection", SELECTION_SEEDS)
        evaluate(a.entry, a.seed, "held_out", HELD_OUT_SEEDS)
    elif a.cmd == "collect":
        collect(a.entry)
    elif a.cmd == "ship":
        ship(a.entry, a.data_dir)
    else:
        record(a.results_json, a.split)


if __name__ == "__main__":
    main()
