"""Train a policy on a task's demonstrations.

    python -m dp_gym.train --task pusht_keypoints --policy diffusion --model-size small \
        --steps 50000 --batch-size 64 --out-dir runs/pusht_kp

Checkpoints (``<out>/checkpoints/latest`` and ``<out>/checkpoints/step_<n>``) hold the EMA policy
(used for evaluation) in ``model.safetensors`` + ``config.json``; ``<out>/trainer_state.safetensors``
holds raw weights, optimiser state and RNG so ``--resume`` continues exactly where a killed run
stopped. Metrics go to ``<out>/metrics.jsonl`` and ``<out>/metrics.csv``.

Several processes (DistributedDataParallel) with the same flags: ``--batch-size`` stays the global
batch, split evenly; process 0 writes the logs and the one checkpoint::

    torchrun --nproc_per_node 4 -m dp_gym.train --task pusht_image --device cuda --batch-size 256 ...
    torchrun --nproc_per_node 2 -m dp_gym.train --task pusht_keypoints --device cpu ...   # gloo

The module reads top to bottom: the options (:class:`TrainConfig`), building (demonstrations,
policy, optimiser), state (checkpoints, trainer state, resume), then the loop; :func:`train` at
the end runs them in that order.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dp_gym.checkpoint import (atomic_save_tensors, atomic_write_bytes, atomic_write_json, load_policy, load_tensors,
                               remove_stale_temp_files, save_policy)
from dp_gym.data.sequence import SequenceDataset, split_episodes
from dp_gym.ema import EMA
from dp_gym.data.replay import EpisodeData
from dp_gym.policies import get_policy_class, make_policy, policy_names, registered_policies
from dp_gym.policies.diffusion.accelerate import AUTOCAST_DTYPES
from dp_gym.policies.policy import Policy
from dp_gym.tasks import Task, get_task, task_names
from dp_gym.utils.cli import option, parse_config, run_cli
from dp_gym.utils.machine import cpu_bf16_flags

TRAINER_STATE = "trainer_state.safetensors"


DEFAULT_POLICY = "diffusion"


def policy_choices() -> list[str]:
    """``--policy`` choices: the registered policies, the default first."""
    return [DEFAULT_POLICY, *(n for n in policy_names() if n != DEFAULT_POLICY)]


def model_size_choices() -> list[str]:
    """``--model-size`` choices: every preset name of any registered policy (the default policy's
    first); whether the chosen policy has it is checked when its config is built."""
    names: list[str] = []
    for name in policy_choices():
        names += [s for s in registered_policies()[name].model_sizes if s not in names]
    return names


@dataclass
class TrainConfig:
    """Every training option; each field is a command-line flag (``--field-name``)."""

    task: str = option("pusht_keypoints", "task: dataset, env and metric", choices=task_names)
    policy: str = option(DEFAULT_POLICY, "policy type (dp_gym.policies registry)", choices=policy_choices)
    model_size: str = option("small", "network size preset (the policy's model_sizes)", choices=model_size_choices)
    denoiser: str = option("unet", "diffusion only: the denoising network", choices=("unet", "transformer"))
    horizon: int = option(16, "diffusion only: predicted actions Tp (bc / ibc use To-1+Ta)")
    n_obs_steps: int = option(2, "observation history To")
    n_action_steps: int = option(8, "actions executed per chunk Ta")
    steps: int = option(50_000, "optimiser steps")
    batch_size: int = option(64, "global batch size (split across torchrun processes)")
    lr: float = option(1e-4, "peak learning rate (AdamW, cosine schedule)")
    weight_decay: float | None = option(None, "AdamW weight decay; unset: the policy's paper value")
    warmup_steps: int = option(500, "linear learning-rate warm-up steps")
    ema_power: float = option(0.75, "power of the EMA decay schedule of the evaluation weights")
    val_ratio: float = option(0.02, "fraction of episodes held out for the validation loss")
    seed: int = option(42, "seed of the split, initialisation and sampling")
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ...")
    out_dir: str = option("runs/default", "run folder: checkpoints, metrics, train_config.json")
    data_dir: str | None = option(None, "dataset folder; unset: $DP_GYM_DATA_DIR, else ./data")
    checkpoint_every: int = option(2000, "write checkpoints/latest and the trainer state every N steps")
    keep_every: int = option(0, "also keep checkpoints/step_<n> every N steps; 0: only latest")
    log_every: int = option(100, "log the mean training loss every N steps")
    val_every: int = option(1000, "validation loss every N steps; 0: never")
    eval_every: int = option(0, "env rollouts every N steps; 0: never")
    eval_episodes: int = option(10, "episodes per env evaluation")
    num_threads: int = option(0, "torch CPU threads; 0: torch's default")
    mixed_precision: str = option("no", "autocast dtype of the forward pass (fp16: CUDA only)", choices=("no", "bf16", "fp16"))
    resume: bool = option(False, "continue the run in --out-dir from its trainer state")
    init_from: str | None = option(None, "fine-tune from this checkpoint's weights, normalisers and policy config "
                                   "(--model-size, --denoiser, --horizon, --n-obs-steps, --n-action-steps unused)")
    policy_overrides: dict[str, Any] = option({}, "policy config overrides, e.g. '{\"num_inference_steps\": 16}'")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        for name in ("checkpoint_every", "log_every", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "keep_every", "val_every", "eval_every", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: off / default), got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr}")
        if not (math.isfinite(self.ema_power) and self.ema_power > 0):
            raise ValueError(f"ema_power must be a positive number, got {self.ema_power}")
        if not 0 <= self.val_ratio < 1:
            raise ValueError(f"val_ratio must be in [0, 1), got {self.val_ratio}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device} requested but CUDA is not available")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.mixed_precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("mixed_precision 'fp16' needs a CUDA device (use 'bf16' on CPU)")


# =============================================================================================
# Building: data, policy, optimiser
# =============================================================================================

@dataclass
class Demonstrations:
    """A task's demonstrations on the training device: every array as a tensor, the episode split
    (``train_mask[e]``: episode e is trained on, the others give the validation loss) and the
    observation shapes / action width the policy is built for."""

    episodes: EpisodeData
    tensors: dict[str, torch.Tensor]
    train_mask: np.ndarray
    obs_shapes: dict[str, list[int]]
    action_dim: int

    def training_frames(self) -> torch.Tensor:
        """Indices of every frame of the training episodes (what the normalisers are fitted on)."""
        ep = self.episodes
        frames = np.concatenate([np.arange(a, b) for a, b, m in zip(ep.episode_starts, ep.episode_ends, self.train_mask) if m])
        return torch.as_tensor(frames, device=next(iter(self.tensors.values())).device)


def load_demonstrations(cfg: TrainConfig, task: Task, device: torch.device) -> Demonstrations:
    """Read the task's dataset, split its episodes (``--val-ratio``, ``--seed``) and move it to
    ``device``."""
    episodes = task.load_dataset(cfg.data_dir)
    return Demonstrations(
        episodes=episodes,
        tensors={k: torch.as_tensor(v).to(device) for k, v in episodes.arrays.items()},
        train_mask=split_episodes(episodes.n_episodes, cfg.val_ratio, cfg.seed),
        obs_shapes={k: list(episodes.arrays[k].shape[1:]) for k in task.obs_keys},
        action_dim=episodes.arrays["action"].shape[-1],
    )


def build_policy_config(cfg: TrainConfig, obs_shapes: dict[str, list[int]], action_dim: int) -> dict[str, Any]:
    """The policy's config dict from the training options (the policy class's
    :meth:`~dp_gym.policies.policy.Policy.config_from_options`); ``policy_overrides`` are applied last.

    * ``--model-size`` picks one of the policy's ``model_sizes`` presets (diffusion: the denoiser
      widths; bc / ibc: the MLP hidden widths).
    * A policy that ``samples_horizon`` (diffusion) takes ``--horizon`` (and diffusion
      ``--denoiser``); the others train on the shortest window holding the executed actions,
      To-1+Ta. Single-step bc / ibc: ``--n-action-steps 1 --policy-overrides '{"chunked": false}'``.
    """
    pc = get_policy_class(cfg.policy).config_from_options(cfg, obs_shapes, action_dim)
    pc.update(cfg.policy_overrides)
    return pc


def init_policy_from_checkpoint(cfg: TrainConfig, obs_shapes: dict[str, list[int]], action_dim: int) -> Policy:
    """The policy of checkpoint ``cfg.init_from`` (weights, normalisers, config), checked against
    the policy type asked for and the task's observation and action shapes."""
    policy, meta = load_policy(cfg.init_from)
    if meta["policy_type"] != cfg.policy:
        raise ValueError(f"--init-from {cfg.init_from} holds a {meta['policy_type']!r} policy, not --policy {cfg.policy!r}")
    if cfg.policy_overrides:
        raise ValueError("--policy-overrides cannot be combined with --init-from (the checkpoint's config fixes the policy)")
    got = meta["policy_config"]
    if got["obs_shapes"] != obs_shapes or got["action_dim"] != action_dim:
        raise ValueError(f"--init-from {cfg.init_from} expects observations {got['obs_shapes']} and {got['action_dim']}-d "
                         f"actions; task {cfg.task!r} has {obs_shapes} and {action_dim}-d")
    return policy.train()


def build_policy(cfg: TrainConfig, demos: Demonstrations, device: torch.device) -> Policy:
    """A new policy of ``--policy`` with its normalisers fitted on the training episodes, or the
    ``--init-from`` checkpoint's policy, which keeps the normalisers its weights were trained with."""
    if cfg.init_from:
        return init_policy_from_checkpoint(cfg, demos.obs_shapes, demos.action_dim).to(device)
    policy = make_policy(cfg.policy, build_policy_config(cfg, demos.obs_shapes, demos.action_dim)).to(device)
    frames = demos.training_frames()
    policy.fit_normalizers({k: demos.tensors[k][frames] for k in policy.normalized_keys})  # images need none
    return policy


def window_datasets(policy: Policy, demos: Demonstrations, task: Task) -> tuple[SequenceDataset, SequenceDataset | None]:
    """Training and validation windows of the policy's horizon (no validation set when every
    episode is trained on)."""
    pcfg = policy.config
    kw = dict(horizon=pcfg.horizon, n_obs_steps=pcfg.n_obs_steps, n_action_steps=pcfg.n_action_steps, obs_keys=list(task.obs_keys))
    ends, mask = demos.episodes.episode_ends, demos.train_mask
    train_set = SequenceDataset(demos.tensors, ends, episode_mask=mask, **kw)
    val_set = SequenceDataset(demos.tensors, ends, episode_mask=~mask, **kw) if (~mask).any() else None
    return train_set, val_set


class _LossModule(nn.Module):
    """``forward(batch) = policy.compute_loss(batch)``, so DistributedDataParallel (which hooks the
    wrapped module's ``forward``) can drive any policy's loss; parameters are the policy's own."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.policy.compute_loss(batch)


def make_optimizer(policy: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the policy's parameter groups; the fused (single-kernel) implementation where
    this torch build has it for the device, the same update as the default one."""
    groups = policy.optim_groups(cfg.weight_decay)
    kw = dict(lr=cfg.lr, betas=(0.95, 0.999), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / torch
        return torch.optim.AdamW(policy.optim_groups(cfg.weight_decay), **kw)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainingState:
    """Everything that changes while training and that ``--resume`` restores: the raw weights,
    their EMA (the evaluated and checkpointed policy), optimiser, learning-rate schedule, gradient
    scaler, the window sampler's generator and the step."""

    policy: Policy
    ema: EMA
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LambdaLR
    grad_scaler: torch.amp.GradScaler
    sampler_rng: torch.Generator
    step: int = 0


def build_training_state(cfg: TrainConfig, policy: Policy, device: torch.device, rank: int) -> TrainingState:
    """AdamW with a cosine schedule after linear warm-up, the EMA of the weights, the gradient
    scaler (fp16 only) and the window sampler's generator (one stream per process)."""
    opt = make_optimizer(policy, cfg)
    return TrainingState(
        policy=policy,
        ema=EMA(policy, power=cfg.ema_power),
        optimizer=opt,
        lr_schedule=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, cfg.warmup_steps, cfg.steps)),
        grad_scaler=torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16"),
        sampler_rng=torch.Generator().manual_seed(cfg.seed + rank),
    )


def distributed_context(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) for this process. Under ``torchrun`` (WORLD_SIZE > 1) this joins
    the process group: NCCL with one GPU per process (LOCAL_RANK) for CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device(device), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return rank, world, dev


# =============================================================================================
# State: checkpoints, trainer state, resume
# =============================================================================================

# Options a ``--resume`` must repeat from the saved run: they fix the data split, the network and
# the optimiser / schedule state that is restored (``--steps`` may grow; logging, evaluation,
# device and paths may change).
RESUME_FIXED = ("task", "policy", "model_size", "denoiser", "horizon", "n_obs_steps", "n_action_steps", "batch_size",
                "lr", "weight_decay", "warmup_steps", "ema_power", "val_ratio", "seed", "init_from", "policy_overrides")


def check_resume_config(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    """Refuse a ``--resume`` whose options differ from the saved run's in a field of
    :data:`RESUME_FIXED` (the message lists every such difference)."""
    diffs = [f"--{k.replace('_', '-')}: saved {saved[k]!r}, now {getattr(cfg, k)!r}"
             for k in RESUME_FIXED if k in saved and saved[k] != getattr(cfg, k)]
    if diffs:
        raise ValueError(f"--resume in {cfg.out_dir} with options that differ from the saved run's ({'; '.join(diffs)}); "
                         "repeat the saved options or train into a new --out-dir")


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimiser state dict into tensors + JSON (for safetensors, no pickle)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_states(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    st = {"sampler": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def gather_rng_states(state: TrainingState, device: torch.device, world: int) -> dict[str, torch.Tensor]:
    """Every process's RNG states as trainer-state tensors (``rng.<name>``, ``rng.<name>.rank<r>``
    for r > 0), so a resumed multi-process run continues exactly. A collective: every process
    calls it."""
    states = _rng_states(state.sampler_rng, device)
    if world == 1:
        return {f"rng.{name}": t for name, t in states.items()}
    gathered = {}
    for name, t in states.items():
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, t.cpu())
        gathered.update({f"rng.{name}{f'.rank{r}' if r else ''}": parts[r] for r in range(world)})
    return gathered


def save_checkpoint(out: Path, cfg: TrainConfig, state: TrainingState, rng: dict[str, torch.Tensor], world: int) -> None:
    """Write ``checkpoints/latest`` (and ``checkpoints/step_<n>`` every ``--keep-every`` steps) with
    the EMA policy, and ``trainer_state.safetensors`` with everything :func:`restore_training_state`
    reads back."""
    step = state.step
    extra = {"task": cfg.task, "train_step": step, "train_config": dataclasses.asdict(cfg)}
    save_policy(state.ema.averaged, out / "checkpoints" / "latest", extra)
    if cfg.keep_every and step % cfg.keep_every == 0:
        save_policy(state.ema.averaged, out / "checkpoints" / f"step_{step}", extra)
    opt_t, opt_meta = optimizer_tensors(state.optimizer)
    tensors_out = {**{f"model.{k}": v for k, v in state.policy.state_dict().items()},
                   **{f"ema.{k}": v for k, v in state.ema.averaged.state_dict().items()},
                   **opt_t, **rng}
    atomic_save_tensors(out / TRAINER_STATE, tensors_out,
                        {"step": step, "optimizer": opt_meta, "lr_scheduler": state.lr_schedule.state_dict(),
                         "grad_scaler": state.grad_scaler.state_dict(), "world_size": world})


def restore_training_state(state_file: Path, state: TrainingState, cfg: TrainConfig, rank: int, device: torch.device) -> None:
    """Load a trainer state written by :func:`save_checkpoint` into ``state`` (weights, EMA,
    optimiser, schedule, scaler, this process's RNG streams, step)."""
    st, meta = load_tensors(state_file, device)
    state.policy.load_state_dict({k[6:]: v for k, v in st.items() if k.startswith("model.")})
    state.ema.averaged.load_state_dict({k[4:]: v for k, v in st.items() if k.startswith("ema.")})
    restore_optimizer(state.optimizer, st, meta["optimizer"])
    state.lr_schedule.load_state_dict(meta["lr_scheduler"])
    if meta.get("grad_scaler"):
        state.grad_scaler.load_state_dict(meta["grad_scaler"])
    suffix = f".rank{rank}" if rank else ""
    if f"rng.sampler{suffix}" not in st:
        raise ValueError(f"{state_file} holds no RNG state for rank {rank}: resume with the number of processes that wrote it")
    state.sampler_rng.set_state(st[f"rng.sampler{suffix}"].cpu())
    torch.set_rng_state(st[f"rng.torch{suffix}"].cpu())
    if device.type == "cuda" and f"rng.cuda{suffix}" in st:
        torch.cuda.set_rng_state(st[f"rng.cuda{suffix}"].cpu(), device)
    state.step = state.ema.step = meta["step"]
    if cfg.steps < state.step:
        raise ValueError(f"--steps {cfg.steps} is below the saved run's step {state.step} in {state_file}; "
                         f"pass --steps {state.step} or more to continue it")


class RunDirLock:
    """Exclusive lock on a run directory (``<out>/.lock``, ``fcntl.flock``): a second trainer writing
    the same folder is refused; the operating system drops the lock when the process ends, even
    by SIGKILL.

    Example:
        >>> import tempfile
        >>> with RunDirLock(Path(tempfile.mkdtemp())) as lock:
        ...     lock.path.name
        '.lock'
    """

    def __init__(self, directory: Path) -> None:
        import fcntl

        self.path = Path(directory) / ".lock"
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(f"{directory} is in use by another trainer (lock {self.path} is held); "
                               "wait for it to finish or choose another --out-dir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing drops the flock

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def trim_metrics(out: Path, step: int) -> float:
    """Drop the metric rows logged after ``step`` (the saved step a resumed run restarts from), so
    the steps between the last checkpoint and a kill are not logged twice. Returns the training
    wall time the kept rows reach (``wall_s`` of the last one, 0 without rows): a resumed run counts
    on from it, so ``wall_s`` stays the time spent on the kept steps across kills."""
    jsonl, csv_path = out / "metrics.jsonl", out / "metrics.csv"
    wall_s = 0.0
    if jsonl.exists():
        lines = [ln for ln in jsonl.read_text().splitlines() if ln.strip()]
        kept = [(ln, row) for ln in lines if (row := json.loads(ln))["step"] <= step]
        wall_s = max((row.get("wall_s", 0.0) for _, row in kept), default=0.0)
        if len(kept) != len(lines):
            atomic_write_bytes(jsonl, "".join(ln + "\n" for ln, _ in kept).encode())
    if csv_path.exists():
        lines = csv_path.read_text().splitlines()
        kept = lines[:1] + [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) <= step]
        if len(kept) != len(lines):
            atomic_write_bytes(csv_path, "".join(ln + "\n" for ln in kept).encode())
    return wall_s


def bf16_hint(cfg: TrainConfig, device: torch.device, flags: list[str] | None = None) -> str | None:
    """A one-line note for a float32 CPU training of a diffusion policy on a CPU with bfloat16
    units (``flags``: :func:`~dp_gym.utils.machine.cpu_bf16_flags` when None), else None."""
    if device.type != "cpu" or cfg.mixed_precision != "no" or cfg.policy != "diffusion":
        return None
    flags = cpu_bf16_flags() if flags is None else flags
    if not flags:
        return None
    return (f"note: this CPU has bfloat16 units ({', '.join(flags)}); --mixed-precision bf16 may train faster "
            "(1.5x on a Zen 4 EPYC), with a loss curve close to float32's but not the same "
            "(benchmarks/results/perf_cpu/README.md)")


# =============================================================================================
# The loop
# =============================================================================================

def make_train_step(model: nn.Module, policy: nn.Module, opt: torch.optim.Optimizer, sched, ema: EMA,
                    scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None, device: torch.device):
    """``step(batch) -> loss``: forward (under autocast when ``amp_dtype``), backward, optimiser,
    LR schedule and EMA update. It returns the loss as a detached device tensor and never waits
    for the device; :func:`finite_mean` checks and averages a run of them."""

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = model(batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        ema.update(policy)
        return loss.detach()

    return step


def finite_mean(losses: list[torch.Tensor], step: int) -> float:
    """Mean of the losses of the last ``len(losses)`` steps (one host sync); raise
    FloatingPointError naming the first step whose loss was not finite."""
    values = torch.stack(losses).double().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise FloatingPointError(f"non-finite loss {float(values[i])} at step {step - len(losses) + i}")
    return float(values.mean())


class MetricsLog:
    """``metrics.jsonl`` and ``metrics.csv`` of a run, appended one row per logged step. Only
    process 0 writes; on the others every method does nothing."""

    FIELDS = ["step", "loss", "val_loss", "lr", "samples_per_s", "eval_score", "eval_success", "wall_s"]

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self._jsonl = open(out / "metrics.jsonl", "a")
        csv_path = out / "metrics.csv"
        new_csv = not csv_path.exists()
        self._csv_file = open(csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self.FIELDS)
        if new_csv:
            self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if not (self.enabled and row):
            return
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._csv.writerow({k: row.get(k) for k in self.FIELDS})
        self._csv_file.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._csv_file.close()


@torch.no_grad()
def validation_loss(state: TrainingState, val_set: SequenceDataset | None, batch_size: int, device: torch.device) -> float | None:
    """The EMA policy's loss on up to 1024 fixed validation windows, with fixed diffusion noise /
    timesteps (so checkpoints are comparable); the global RNG is left as it was."""
    if val_set is None:
        return None
    state.policy.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(val_set), (min(1024, 4 * batch_size),), generator=g)
    rng_state = torch.get_rng_state()
    torch.manual_seed(0)
    loss = float(state.ema.averaged.compute_loss(val_set.get(ids.to(device))))
    torch.set_rng_state(rng_state)
    state.policy.train()
    return loss


def train(cfg: TrainConfig) -> Path:
    """Train as ``cfg`` says; returns the ``checkpoints/latest`` directory. The run directory is
    locked against other trainers while this runs."""
    rank, world, device = distributed_context(cfg.device)
    main_process = rank == 0  # only process 0 logs and writes; the others train and all-reduce
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) must be divisible by the number of processes ({world})")
    local_batch = cfg.batch_size // world
    out = Path(cfg.out_dir)
    state_file = out / TRAINER_STATE
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed + rank)  # each process draws its own noise / timesteps / crops
    task = get_task(cfg.task)
    if cfg.steps < cfg.warmup_steps and main_process:
        warnings.warn(f"--steps {cfg.steps} is below --warmup-steps {cfg.warmup_steps}: the learning rate never "
                      "reaches --lr", stacklevel=2)
    if cfg.resume and (out / "train_config.json").exists():
        check_resume_config(cfg, json.loads((out / "train_config.json").read_text()))

    # --- build: data, policy, optimiser -------------------------------------------------------
    demos = load_demonstrations(cfg, task, device)
    policy = build_policy(cfg, demos, device)
    train_set, val_set = window_datasets(policy, demos, task)
    state = build_training_state(cfg, policy, device, rank)
    ema = state.ema
    # Mixed precision: the forward pass runs under autocast, weights and optimiser stay float32.
    amp_dtype = AUTOCAST_DTYPES[cfg.mixed_precision]
    model: nn.Module = _LossModule(policy)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_step = make_train_step(model, policy, state.optimizer, state.lr_schedule, ema, state.grad_scaler, amp_dtype, device)

    with contextlib.ExitStack() as exit_stack:
        # --- state: lock the run folder, resume -----------------------------------------------
        # The output folder is made only now, so a run refused for bad options or data leaves none.
        if main_process:
            out.mkdir(parents=True, exist_ok=True)
            exit_stack.enter_context(RunDirLock(out))
            remove_stale_temp_files(out)  # left by writes a kill interrupted; nobody else writes here now
        wall_before = 0.0  # training time of the steps a resumed run keeps
        if cfg.resume and state_file.exists():
            restore_training_state(state_file, state, cfg, rank, device)
            if main_process:
                wall_before = trim_metrics(out, state.step)
                print(f"resumed from {state_file} at step {state.step}")
        elif cfg.resume and main_process:
            print(f"--resume given but {state_file} does not exist: starting from scratch")
        if main_process:
            atomic_write_json(out / "train_config.json", {**dataclasses.asdict(cfg), "world_size": world})
            n_params = sum(p.numel() for p in policy.parameters())
            print(f"task={cfg.task} policy={cfg.policy} params={n_params / 1e6:.2f}M train_windows={len(train_set)} "
                  f"val_windows={len(val_set) if val_set else 0} device={device} processes={world}")
            if hint := bf16_hint(cfg, device):
                print(hint)

        # --- loop -----------------------------------------------------------------------------
        metrics = MetricsLog(out, enabled=main_process)
        exit_stack.callback(metrics.close)
        policy.train()
        step = state.step
        t_last = time.perf_counter()
        t_start = t_last - wall_before
        losses: list[torch.Tensor] = []  # since the last log row, on the device
        bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True, mininterval=2.0, disable=not main_process)
        while step < cfg.steps:
            losses.append(train_step(train_set.sample(local_batch, state.sampler_rng)))
            step = state.step = step + 1
            bar.update(1)
            row: dict[str, Any] = {}
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                sps = cfg.batch_size * len(losses) / max(now - t_last, 1e-9)
                mean_loss = finite_mean(losses, step)
                if world > 1:  # log the mean over all processes' batches (one all-reduce per log row)
                    total = torch.tensor(mean_loss, dtype=torch.float64, device=device)
                    dist.all_reduce(total)
                    mean_loss = total.item() / world
                row = {"step": step, "loss": mean_loss, "lr": state.lr_schedule.get_last_lr()[0], "samples_per_s": sps,
                       "wall_s": now - t_start}
                t_last, losses = now, []
                bar.set_postfix(loss=f"{row['loss']:.4f}", sps=f"{sps:.0f}")
            if main_process and cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
                row = row or {"step": step, "wall_s": time.perf_counter() - t_start}
                row["val_loss"] = validation_loss(state, val_set, cfg.batch_size, device)
            if main_process and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                from dp_gym.evaluation import evaluate_policy

                res = evaluate_policy(ema.averaged, task, seeds=list(range(100_000, 100_000 + cfg.eval_episodes)), n_envs=min(cfg.eval_episodes, 10))
                row = row or {"step": step, "wall_s": time.perf_counter() - t_start}
                row["eval_score"], row["eval_success"] = res["mean_max_reward"], res["success_rate"]
                tqdm.write(f"step {step}: eval score {res['mean_max_reward']:.3f} success {res['success_rate']:.2f}")
            metrics.write(row)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if losses:
                    finite_mean(losses, step)  # never checkpoint weights a non-finite loss updated
                rng = gather_rng_states(state, device, world)  # every process takes part
                if main_process:
                    save_checkpoint(out, cfg, state, rng, world)
        bar.close()
    if world > 1:
        # Release the DistributedDataParallel wrapper (its reducer holds the process group and gloo's
        # pending work objects) while the interpreter is fully alive: left to interpreter shutdown,
        # gloo's worker threads can abort the process after training has finished.
        del train_step, model
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    if main_process:
        print(f"done: {step} steps; checkpoint at {out / 'checkpoints' / 'latest'}")
    return out / "checkpoints" / "latest"


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return parse_config(TrainConfig, argv, description=__doc__, prog="python -m dp_gym.train")


def _main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    if cfg.data_dir is None and os.environ.get("DP_GYM_DATA_DIR"):
        cfg.data_dir = os.environ["DP_GYM_DATA_DIR"]
    train(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
