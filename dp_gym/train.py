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
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
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
from dp_gym.policies import make_policy
from dp_gym.policies.diffusion.accelerate import AUTOCAST_DTYPES
from dp_gym.tasks import get_task, task_names
from dp_gym.utils.cli import option, parse_config, run_cli


@dataclass
class TrainConfig:
    """Every training option; each field is a command-line flag (``--field-name``)."""

    task: str = option("pusht_keypoints", "task: dataset, env and metric", choices=task_names)
    policy: str = option("diffusion", "policy type", choices=("diffusion", "bc", "ibc"))
    model_size: str = option("small", "network size preset (dp_gym.policies.model_sizes)", choices=("small", "medium", "paper"))
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


def build_policy_config(cfg: TrainConfig, obs_shapes: dict[str, list[int]], action_dim: int) -> dict[str, Any]:
    """The policy's config dict from the training options; ``policy_overrides`` are applied last.

    * diffusion: ``--model-size`` picks the denoiser widths, ``--denoiser`` the network.
    * bc / ibc: ``--model-size`` picks the MLP hidden widths (``MLP_MODEL_SIZES``). Their horizon is
      the shortest window holding the executed actions, To-1+Ta (they predict nothing beyond it, and
      a longer window would drop training frames at episode ends), so ``--horizon`` is not used.
      Single-step variants: ``--n-action-steps 1 --policy-overrides '{"chunked": false}'``.
    """
    from dp_gym.policies import model_sizes

    sizes = model_sizes(cfg.policy)
    if cfg.model_size not in sizes:
        raise ValueError(f"unknown model size {cfg.model_size!r} for policy {cfg.policy!r}; available: {sorted(sizes)}")
    pc: dict[str, Any] = dict(obs_shapes=obs_shapes, action_dim=action_dim, horizon=cfg.horizon,
                              n_obs_steps=cfg.n_obs_steps, n_action_steps=cfg.n_action_steps)
    if cfg.policy == "diffusion":
        pc.update(denoiser=cfg.denoiser, **sizes[cfg.model_size])
    else:
        pc.update(horizon=cfg.n_obs_steps + cfg.n_action_steps - 1, **sizes[cfg.model_size])
    pc.update(cfg.policy_overrides)
    return pc


def init_policy_from_checkpoint(cfg: TrainConfig, obs_shapes: dict[str, list[int]], action_dim: int) -> nn.Module:
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


def trim_metrics(out: Path, step: int) -> None:
    """Drop the metric rows logged after ``step`` (the saved step a resumed run restarts from), so
    the steps between the last checkpoint and a kill are not logged twice."""
    jsonl, csv_path = out / "metrics.jsonl", out / "metrics.csv"
    if jsonl.exists():
        lines = [ln for ln in jsonl.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
        if len(kept) != len(lines):
            atomic_write_bytes(jsonl, "".join(ln + "\n" for ln in kept).encode())
    if csv_path.exists():
        lines = csv_path.read_text().splitlines()
        kept = lines[:1] + [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) <= step]
        if len(kept) != len(lines):
            atomic_write_bytes(csv_path, "".join(ln + "\n" for ln in kept).encode())


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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


def _rng_states(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    st = {"sampler": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def train(cfg: TrainConfig) -> Path:
    """Train as ``cfg`` says; returns the ``checkpoints/latest`` directory. The run directory is
    locked against other trainers while this runs."""
    with contextlib.ExitStack() as exit_stack:
        return _train(cfg, exit_stack)


def _train(cfg: TrainConfig, exit_stack: contextlib.ExitStack) -> Path:
    rank, world, device = distributed_context(cfg.device)
    main_process = rank == 0
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) must be divisible by the number of processes ({world})")
    local_batch = cfg.batch_size // world
    out = Path(cfg.out_dir)
    state_file = out / "trainer_state.safetensors"
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed + rank)  # each process draws its own noise / timesteps / crops
    task = get_task(cfg.task)
    if cfg.steps < cfg.warmup_steps and main_process:
        warnings.warn(f"--steps {cfg.steps} is below --warmup-steps {cfg.warmup_steps}: the learning rate never "
                      "reaches --lr", stacklevel=2)
    if cfg.resume and (out / "train_config.json").exists():
        check_resume_config(cfg, json.loads((out / "train_config.json").read_text()))

    # --- data -----------------------------------------------------------------------------
    episodes = task.load_dataset(cfg.data_dir)
    train_mask = split_episodes(episodes.n_episodes, cfg.val_ratio, cfg.seed)
    tensors = {k: torch.as_tensor(v).to(device) for k, v in episodes.arrays.items()}
    obs_shapes = {k: list(episodes.arrays[k].shape[1:]) for k in task.obs_keys}
    action_dim = episodes.arrays["action"].shape[-1]

    # --- policy, optimiser, EMA -----------------------------------------------------------
    if cfg.init_from:
        policy = init_policy_from_checkpoint(cfg, obs_shapes, action_dim).to(device)
    else:
        policy = make_policy(cfg.policy, build_policy_config(cfg, obs_shapes, action_dim)).to(device)
    pcfg = policy.config
    ds_kw = dict(horizon=pcfg.horizon, n_obs_steps=pcfg.n_obs_steps, n_action_steps=pcfg.n_action_steps, obs_keys=list(task.obs_keys))
    train_set = SequenceDataset(tensors, episodes.episode_ends, episode_mask=train_mask, **ds_kw)
    val_set = SequenceDataset(tensors, episodes.episode_ends, episode_mask=~train_mask, **ds_kw) if (~train_mask).any() else None
    if not cfg.init_from:  # a fine-tuned policy keeps the normalisers its weights were trained with
        train_frames = np.concatenate([np.arange(a, b) for a, b, m in zip(episodes.episode_starts, episodes.episode_ends, train_mask) if m])
        frames_t = torch.as_tensor(train_frames, device=device)
        policy.fit_normalizers({k: tensors[k][frames_t] for k in policy.normalized_keys})  # images need none
    opt = make_optimizer(policy, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, cfg.warmup_steps, cfg.steps))
    ema = EMA(policy, power=cfg.ema_power)
    # Mixed precision: the forward pass runs under autocast, weights and optimiser stay float32.
    amp_dtype = AUTOCAST_DTYPES[cfg.mixed_precision]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")
    gen = torch.Generator().manual_seed(cfg.seed + rank)  # each process samples its own windows
    model: nn.Module = _LossModule(policy)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    n_params = sum(p.numel() for p in policy.parameters())
    train_step = make_train_step(model, policy, opt, sched, ema, scaler, amp_dtype, device)

    # The output folder is made only now, so a run refused for bad options or data leaves none.
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        exit_stack.enter_context(RunDirLock(out))
        remove_stale_temp_files(out)  # left by writes a kill interrupted; nobody else writes here now

    step = 0
    if cfg.resume and state_file.exists():
        st, meta = load_tensors(state_file, device)
        policy.load_state_dict({k[6:]: v for k, v in st.items() if k.startswith("model.")})
        ema.averaged.load_state_dict({k[4:]: v for k, v in st.items() if k.startswith("ema.")})
        restore_optimizer(opt, st, meta["optimizer"])
        sched.load_state_dict(meta["lr_scheduler"])
        if meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        suffix = f".rank{rank}" if rank else ""
        if f"rng.sampler{suffix}" not in st:
            raise ValueError(f"{state_file} holds no RNG state for rank {rank}: resume with the number of processes that wrote it")
        gen.set_state(st[f"rng.sampler{suffix}"].cpu())
        torch.set_rng_state(st[f"rng.torch{suffix}"].cpu())
        if device.type == "cuda" and f"rng.cuda{suffix}" in st:
            torch.cuda.set_rng_state(st[f"rng.cuda{suffix}"].cpu(), device)
        step = ema.step = meta["step"]
        if cfg.steps < step:
            raise ValueError(f"--steps {cfg.steps} is below the saved run's step {step} in {state_file}; "
                             f"pass --steps {step} or more to continue it")
        if main_process:
            trim_metrics(out, step)
            print(f"resumed from {state_file} at step {step}")
    elif cfg.resume and main_process:
        print(f"--resume given but {state_file} does not exist: starting from scratch")
    if main_process:
        atomic_write_json(out / "train_config.json", {**dataclasses.asdict(cfg), "world_size": world})

    def checkpoint(step: int) -> None:
        # Every process's RNG state is kept (so a resumed multi-process run continues exactly);
        # only process 0 writes.
        states = _rng_states(gen, device)
        if world > 1:
            gathered = {}
            for name, t in states.items():
                parts: list[Any] = [None] * world
                dist.all_gather_object(parts, t.cpu())
                gathered.update({f"rng.{name}{f'.rank{r}' if r else ''}": parts[r] for r in range(world)})
        else:
            gathered = {f"rng.{name}": t for name, t in states.items()}
        if not main_process:
            return
        extra = {"task": cfg.task, "train_step": step, "train_config": dataclasses.asdict(cfg)}
        save_policy(ema.averaged, out / "checkpoints" / "latest", extra)
        if cfg.keep_every and step % cfg.keep_every == 0:
            save_policy(ema.averaged, out / "checkpoints" / f"step_{step}", extra)
        opt_t, opt_meta = optimizer_tensors(opt)
        tensors_out = {**{f"model.{k}": v for k, v in policy.state_dict().items()},
                       **{f"ema.{k}": v for k, v in ema.averaged.state_dict().items()},
                       **opt_t, **gathered}
        atomic_save_tensors(state_file, tensors_out, {"step": step, "optimizer": opt_meta, "lr_scheduler": sched.state_dict(),
                                                       "grad_scaler": scaler.state_dict(), "world_size": world})

    @torch.no_grad()
    def validation_loss() -> float | None:
        if val_set is None:
            return None
        policy.eval()
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(len(val_set), (min(1024, 4 * cfg.batch_size),), generator=g)
        rng_state = torch.get_rng_state()
        torch.manual_seed(0)  # fixed diffusion noise / timesteps → comparable across checkpoints
        loss = float(ema.averaged.compute_loss(val_set.get(ids.to(device))))
        torch.set_rng_state(rng_state)
        policy.train()
        return loss

    # --- loop -----------------------------------------------------------------------------
    # Only process 0 logs and writes; the others train and join the gradient all-reduce.
    if main_process:
        jsonl = open(out / "metrics.jsonl", "a")
        csv_path = out / "metrics.csv"
        new_csv = not csv_path.exists()
        csv_file = open(csv_path, "a", newline="")
        csv_writer = csv.DictWriter(csv_file, fieldnames=["step", "loss", "val_loss", "lr", "samples_per_s", "eval_score", "eval_success", "wall_s"])
        if new_csv:
            csv_writer.writeheader()
    if main_process:
        print(f"task={cfg.task} policy={cfg.policy} params={n_params / 1e6:.2f}M train_windows={len(train_set)} "
              f"val_windows={len(val_set) if val_set else 0} device={device} processes={world}")
    policy.train()
    t_start = t_last = time.perf_counter()
    losses: list[torch.Tensor] = []  # since the last log row, on the device
    bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True, mininterval=2.0, disable=not main_process)
    while step < cfg.steps:
        losses.append(train_step(train_set.sample(local_batch, gen)))
        step += 1
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
            row = {"step": step, "loss": mean_loss, "lr": sched.get_last_lr()[0], "samples_per_s": sps, "wall_s": now - t_start}
            t_last, losses = now, []
            bar.set_postfix(loss=f"{row['loss']:.4f}", sps=f"{sps:.0f}")
        if main_process and cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
            row = row or {"step": step, "wall_s": time.perf_counter() - t_start}
            row["val_loss"] = validation_loss()
        if main_process and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            from dp_gym.evaluation import evaluate_policy

            res = evaluate_policy(ema.averaged, task, seeds=list(range(100_000, 100_000 + cfg.eval_episodes)), n_envs=min(cfg.eval_episodes, 10))
            row = row or {"step": step, "wall_s": time.perf_counter() - t_start}
            row["eval_score"], row["eval_success"] = res["mean_max_reward"], res["success_rate"]
            tqdm.write(f"step {step}: eval score {res['mean_max_reward']:.3f} success {res['success_rate']:.2f}")
        if row and main_process:
            jsonl.write(json.dumps(row) + "\n")
            jsonl.flush()
            csv_writer.writerow({k: row.get(k) for k in csv_writer.fieldnames})
            csv_file.flush()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if losses:
                finite_mean(losses, step)  # never checkpoint weights a non-finite loss updated
            checkpoint(step)
    bar.close()
    if main_process:
        jsonl.close()
        csv_file.close()
    if world > 1:
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
