"""Performance harness: predict latency, training throughput and env speed in one run.

    python -m dp_gym.perf --device cpu --out-dir benchmarks/results/perf_cpu
    python -m dp_gym.perf --device cuda --modes eager,cuda_graph,compile --autocast no,bf16 \
        --out-dir benchmarks/results/perf_gpu

For a low-dim (Push-T keypoints: 20-d obs) and an image (Push-T pixels: 96x96 RGB + agent position)
diffusion policy at each ``--sizes`` (small: our CPU UNet; paper: the paper's 256/512/1024 UNet),
it measures the median over ``--repeats`` (after ``--warmup``) of:

* predict latency per chunk (encoder + whole denoising loop) at batch 1 and batch ``--n-envs``,
  for DDPM-100 and DDIM-10, in every ``--modes`` x ``--autocast`` variant; each variant's actions
  are compared with the plain eager float32 path for the same noise (max abs difference, in
  normalised action units where the range is [-1, 1]);
* training samples/s (forward + backward + AdamW step) at ``--train-batch``;
* env steps/s of the Push-T env (keypoints and pixels observations), ``--n-envs`` in a sync vector.

Weights are random: timings do not depend on them. GPU timings synchronise the device.
Writes ``perf.json`` and ``perf.md`` (with the machine description) to ``--out-dir``.
"""

from __future__ import annotations

import dataclasses
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dp_gym.benchmark import median_ms
from dp_gym.checkpoint import atomic_write_bytes, atomic_write_json
from dp_gym.policies import make_policy, model_sizes
from dp_gym.policies.diffusion.accelerate import AUTOCAST_DTYPES, SamplingAccelerator
from dp_gym.utils.cli import command_line, option, parse_config, run_cli


@dataclass
class PerfConfig:
    """Every ``python -m dp_gym.perf`` option; each field is a flag (``--field-name``)."""

    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ...")
    kinds: str = option("lowdim,image", "comma list of policy kinds: lowdim, image")
    sizes: str = option("small,paper", "comma list of model sizes: small, medium, paper")
    samplers: str = option("ddpm:100,ddim:10", "comma list of sampler:steps")
    modes: str = option("eager", "comma list of eager | compile | cuda_graph")
    autocast: str = option("no", "comma list of no | bf16 | fp16")
    n_envs: int = option(10, "batch size of the batched predict and env measurements")
    repeats: int = option(5, "timed repeats per measurement (the median is reported)")
    warmup: int = option(2, "untimed calls before each measurement")
    train_batch: int = option(64, "batch size of the training measurement")
    train_steps: int = option(5, "timed training steps")
    env_steps: int = option(300, "timed env steps")
    num_threads: int = option(0, "torch CPU threads; 0: torch's default")
    skip: str = option("", "comma list of sections to skip: predict, train, env")
    out_dir: str = option("benchmarks/results/perf", "folder for perf.json and perf.md")

    def __post_init__(self) -> None:
        for name in ("n_envs", "repeats", "train_batch", "train_steps", "env_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.num_threads < 0:
            raise ValueError(f"warmup and num_threads must be >= 0, got {self.warmup} and {self.num_threads}")


KINDS = {
    "lowdim": {"obs": [20]},
    "image": {"pixels": [96, 96, 3], "agent_pos": [2]},
}


def machine_description(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    desc = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
    return desc


def build_policy(kind: str, size: str, device: torch.device):
    shapes = KINDS[kind]
    policy = make_policy("diffusion", dict(obs_shapes=shapes, action_dim=2, **model_sizes("diffusion")[size])).to(device)
    g = torch.Generator().manual_seed(0)
    fit = {k: torch.rand(256, s[0], generator=g) * 512 for k, s in shapes.items() if len(s) == 1}
    fit["action"] = torch.rand(256, 2, generator=g) * 512
    policy.fit_normalizers({k: v.to(device) for k, v in fit.items()})
    return policy


def random_obs(policy, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = policy.config
    obs = {}
    for k, s in c.obs_shapes.items():
        if len(s) == 3:
            obs[k] = torch.randint(0, 256, (batch, c.n_obs_steps, *s), generator=g, dtype=torch.uint8)
        else:
            obs[k] = torch.rand(batch, c.n_obs_steps, *s, generator=g) * 512
    return {k: v.to(device) for k, v in obs.items()}


def bench_predict(cfg: PerfConfig, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    modes = [m for m in cfg.modes.split(",") if m]
    autocasts = [a for a in cfg.autocast.split(",") if a]
    for kind in cfg.kinds.split(","):
        for size in cfg.sizes.split(","):
            policy = build_policy(kind, size, device).eval()
            for spec in cfg.samplers.split(","):
                sampler, steps = spec.split(":")
                steps = int(steps)
                for batch in sorted({1, cfg.n_envs}):
                    obs = random_obs(policy, batch, device)
                    noise = torch.randn(batch, *policy.noise_shape(steps, sampler), generator=torch.Generator().manual_seed(1)).to(device)
                    with torch.inference_mode():
                        ref = policy.sample_actions(obs, noise=noise, sampler=sampler, num_inference_steps=steps)
                    scale = (policy.action_normalizer.data_max - policy.action_normalizer.data_min) / 2
                    for mode in modes:
                        for ac in autocasts:
                            with warnings.catch_warnings(record=True) as caught:
                                warnings.simplefilter("always")
                                acc = SamplingAccelerator(policy, mode, ac, sampler, steps)

                                def run() -> torch.Tensor:
                                    with torch.inference_mode():
                                        return policy.sample_actions(obs, noise=noise, sampler=sampler, num_inference_steps=steps, accelerator=acc)

                                t0 = time.perf_counter()
                                out = run()  # first call: compilation / graph capture
                                first_ms = 1000 * (time.perf_counter() - t0)
                                ms = median_ms(run, device, cfg.repeats, cfg.warmup)
                            row = {"kind": kind, "size": size, "sampler": f"{sampler}-{steps}", "batch": batch,
                                   "mode": mode, "autocast": ac, "active_mode": acc.active_mode, "ms_per_chunk": ms,
                                   "first_call_ms": first_ms,
                                   "max_abs_diff_vs_eager_fp32": float(((out - ref).abs() / scale).max()),
                                   "fallback_reason": acc.fallback_reason,
                                   "warnings": [str(w.message)[:200] for w in caught]}
                            rows.append(row)
                            print(f"predict {kind:6s} {size:5s} {row['sampler']:8s} b={batch:<3d} {mode}/{ac} "
                                  f"({acc.active_mode}): {ms:8.1f} ms  diff {row['max_abs_diff_vs_eager_fp32']:.2e}", flush=True)
    return rows


def bench_train(cfg: PerfConfig, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for kind in cfg.kinds.split(","):
        for size in cfg.sizes.split(","):
            for ac in [a for a in cfg.autocast.split(",") if a]:
                dtype = AUTOCAST_DTYPES[ac]
                if ac == "fp16" and device.type != "cuda":
                    continue
                policy = build_policy(kind, size, device).train()
                opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
                scaler = torch.amp.GradScaler(device.type, enabled=ac == "fp16")
                obs = random_obs(policy, cfg.train_batch, device)
                batch = {**obs, "action": (torch.rand(cfg.train_batch, policy.config.horizon, 2) * 512).to(device)}

                def step() -> None:
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        loss = policy.compute_loss(batch)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()

                ms = median_ms(step, device, cfg.train_steps, cfg.warmup)
                row = {"kind": kind, "size": size, "autocast": ac, "batch": cfg.train_batch, "ms_per_step": ms,
                       "samples_per_s": cfg.train_batch / (ms / 1000),
                       "params_M": sum(p.numel() for p in policy.parameters()) / 1e6}
                rows.append(row)
                print(f"train   {kind:6s} {size:5s} {ac:4s} batch {cfg.train_batch}: {row['samples_per_s']:.1f} samples/s", flush=True)
    return rows


def bench_env(cfg: PerfConfig) -> list[dict[str, Any]]:
    import gymnasium as gym

    import dp_gym  # noqa: F401  (registers dp_gym/PushT-v0)

    rows = []
    for obs_type in ("keypoints", "pixels_agent_pos"):
        env = gym.vector.SyncVectorEnv([lambda: gym.make("dp_gym/PushT-v0", obs_type=obs_type) for _ in range(cfg.n_envs)],
                                       autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        env.reset(seed=list(range(cfg.n_envs)))
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for _ in range(cfg.env_steps):
            env.step(rng.uniform(100, 400, size=(cfg.n_envs, 2)).astype(np.float32))
        wall = time.perf_counter() - t0
        env.close()
        rows.append({"env": f"PushT {obs_type}", "n_envs": cfg.n_envs, "env_steps_per_s": cfg.n_envs * cfg.env_steps / wall})
        print(f"env     PushT {obs_type}: {rows[-1]['env_steps_per_s']:.0f} env-steps/s ({cfg.n_envs} envs)", flush=True)
    return rows


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# dp_gym performance", "", f"Machine: {m['cpu']} ({m['cpu_count']} CPUs, torch threads {m['torch_threads']})"
             + (f", GPU {m['gpu']}" if "gpu" in m else "") + f"; torch {m['torch']}; device `{m['device']}`.", "",
             f"Command: `{res['command']}`", ""]
    if res["predict"]:
        lines += ["## Predict latency per chunk (median ms; encoder + full denoising loop)", "",
                  "| policy | size | sampler | batch | mode | autocast | runs as | ms/chunk | speed-up vs eager fp32 | max abs diff vs eager fp32 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        base = {(r["kind"], r["size"], r["sampler"], r["batch"]): r["ms_per_chunk"] for r in res["predict"]
                if r["mode"] == "eager" and r["autocast"] == "no"}
        for r in res["predict"]:
            b = base.get((r["kind"], r["size"], r["sampler"], r["batch"]))
            lines.append(f"| {r['kind']} | {r['size']} | {r['sampler']} | {r['batch']} | {r['mode']} | {r['autocast']} | {r['active_mode']} "
                         f"| {r['ms_per_chunk']:.1f} | {b / r['ms_per_chunk']:.2f}× | {r['max_abs_diff_vs_eager_fp32']:.1e} |" if b else
                         f"| {r['kind']} | {r['size']} | {r['sampler']} | {r['batch']} | {r['mode']} | {r['autocast']} | {r['active_mode']} "
                         f"| {r['ms_per_chunk']:.1f} | – | {r['max_abs_diff_vs_eager_fp32']:.1e} |")
        lines.append("")
    if res["train"]:
        lines += ["## Training throughput", "", "| policy | size | params | autocast | batch | ms/step | samples/s |", "|---|---|---|---|---|---|---|"]
        for r in res["train"]:
            lines.append(f"| {r['kind']} | {r['size']} | {r['params_M']:.1f}M | {r['autocast']} | {r['batch']} | {r['ms_per_step']:.0f} | {r['samples_per_s']:.1f} |")
        lines.append("")
    if res["env"]:
        lines += ["## Environment speed", "", "| env | envs | env-steps/s |", "|---|---|---|"]
        for r in res["env"]:
            lines.append(f"| {r['env']} | {r['n_envs']} | {r['env_steps_per_s']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def run(cfg: PerfConfig, command: str = "") -> dict[str, Any]:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device} requested but CUDA is not available")
    skip = set(filter(None, cfg.skip.split(",")))
    res = {"config": dataclasses.asdict(cfg), "command": command, "machine": machine_description(device),
           "predict": [] if "predict" in skip else bench_predict(cfg, device),
           "train": [] if "train" in skip else bench_train(cfg, device),
           "env": [] if "env" in skip else bench_env(cfg)}
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "perf.json", res)
    atomic_write_bytes(out / "perf.md", to_markdown(res).encode())
    print(f"wrote {out / 'perf.json'} and {out / 'perf.md'}")
    return res


def _main(argv: list[str]) -> int:
    cfg = parse_config(PerfConfig, argv, description=__doc__, prog="python -m dp_gym.perf")
    run(cfg, command=command_line("dp_gym.perf", argv))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
