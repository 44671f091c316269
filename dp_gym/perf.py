"""Performance harness: predict latency, training throughput and env speed in one run.

    python -m dp_gym.perf --device cpu --num-threads 1 --out-dir benchmarks/results/perf_cpu
    python -m dp_gym.perf --device cuda --modes eager,cuda_graph,compile --autocast no,bf16 \
        --out-dir benchmarks/results/perf_gpu

For a low-dim (Push-T keypoints: 20-d obs) and an image (Push-T pixels: 96x96 RGB + agent position)
diffusion policy at each ``--sizes`` (small: our CPU UNet; paper: the paper's 256/512/1024 UNet),
it measures, with the variants' calls interleaved (round-robin, so load on a shared machine hits
them alike), the median over ``--repeats`` (after ``--warmup``) of:

* predict latency per chunk (encoder + whole denoising loop) at batch 1 and batch ``--n-envs``,
  for each ``--samplers``, in every ``--modes`` x ``--autocast`` variant: ``per_step`` (the full
  denoiser, conditioning included, at every step: the textbook loop), ``eager`` (plain float32,
  conditioning computed once per chunk: the reference every ratio and action difference is taken
  against), ``openvino`` (the CPU default; with ``--autocast bf16`` also OpenVINO's bfloat16
  inference), ``onnx``, ``compile``, ``cuda_graph``. The first call's time
  (export / compilation / capture) is reported separately. The action difference is the max abs
  difference from eager float32 for the same noise, in normalised action units (range [-1, 1]);
* training samples/s at ``--train-batch``: ``plain`` (PyTorch's own layers, AdamW's default
  implementation, loss read back and checked every step) against ``fast``
  (:func:`dp_gym.train.make_train_step`: fused AdamW, no per-step host sync, the CPU training
  kernels of :mod:`dp_gym.policies.diffusion.train_kernels`), same initial weights and batches,
  with the largest loss difference; every ``--autocast`` variant in one round-robin, each also
  against plain float32;
* env steps/s of the Push-T env (keypoints and pixels observations), ``--n-envs`` in a sync
  vector, against the env as it was before (gym-pusht's coverage computed twice per step, its
  strided canvas copy for pixel observations).

Weights are random: timings do not depend on them. GPU timings synchronise the device.
Writes ``perf.json`` and ``perf.md`` (with the machine description) to ``--out-dir``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dp_gym.checkpoint import atomic_write_bytes, atomic_write_json
from dp_gym.evaluation import timed_s
from dp_gym.policies import make_policy, model_sizes
from dp_gym.policies.kernels import pytorch_kernels
from dp_gym.policies.diffusion.accelerate import AUTOCAST_DTYPES, RUNTIMES, SamplingAccelerator, per_step_loop, runtime_autocasts
from dp_gym.utils.cli import command_line, option, parse_config, run_cli
from dp_gym.utils.machine import machine_description


@dataclass
class PerfConfig:
    """Every ``python -m dp_gym.perf`` option; each field is a flag (``--field-name``)."""

    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ...")
    kinds: str = option("lowdim,image", "comma list of policy kinds: lowdim, image")
    sizes: str = option("small,paper", "comma list of model sizes: small, medium, paper")
    samplers: str = option("ddpm:100,ddim:10", "comma list of sampler:steps")
    modes: str = option("per_step,eager,onnx,openvino", "comma list of per_step | eager | onnx | openvino | compile | cuda_graph "
                        "(per_step: the whole denoiser at every step, the reference the others are compared with)")
    autocast: str = option("no", "comma list of no | bf16 | fp16")
    n_envs: int = option(10, "batch size of the batched predict and env measurements")
    repeats: int = option(5, "timed repeats per measurement (the median is reported)")
    warmup: int = option(2, "untimed calls before each measurement")
    train_batch: int = option(64, "batch size of the training measurement")
    train_steps: int = option(10, "timed training steps")
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


def trunk_inputs(size: str, batch: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A random-weight low-dim policy of UNet ``size`` on CPU and the inputs of one trunk pass
    at ``batch``: noisy actions x (B, Tp, 2) and the first DDIM-10 step's FiLM conditioning c, as
    the default sampling path computes it (for the trunk-only runtime comparisons in benchmarks/)."""
    policy = build_policy("lowdim", size, torch.device("cpu")).eval()
    obs = random_obs(policy, batch, torch.device("cpu"))
    acc = SamplingAccelerator(policy, "onnx")
    with torch.inference_mode():
        c = policy.denoiser.condition(acc.loop.step_ids[:1].expand(batch), acc.encode_obs(policy, obs))
    return policy, torch.randn(batch, policy.config.horizon, 2), c


def interleaved_ms(fns: dict[Any, Any], device: torch.device, repeats: int, warmup: int) -> dict[Any, float]:
    """Median wall time (ms) of each callable, the calls interleaved round-robin, after
    ``warmup`` rounds; CUDA is synchronised around each call."""
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t = timed_s(fn, device)
            if r >= warmup:
                times[name].append(t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def _predict_variant(policy, mode: str, autocast: str, obs, noise, sampler: str, steps: int):
    """(callable returning the actions, its accelerator or None for ``per_step``)."""
    if mode == "per_step":
        def run() -> torch.Tensor:
            with torch.inference_mode(), pytorch_kernels():  # the textbook loop: PyTorch's own layers
                x = per_step_loop(policy.denoiser, policy.scheduler, sampler, steps, policy.encode_obs(obs), noise)
                return policy.action_normalizer.unnormalize(x)
        return run, None
    acc = SamplingAccelerator(policy, mode, autocast, sampler, steps)
    return (lambda: policy.sample_actions(obs, noise=noise, sampler=sampler, num_inference_steps=steps, accelerator=acc)), acc


def bench_predict(cfg: PerfConfig, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    modes = [m for m in cfg.modes.split(",") if m]
    autocasts = [a for a in cfg.autocast.split(",") if a]
    def mode_autocasts(m: str) -> list[str]:
        """per_step runs float32; a runtime float32 ("no") or a reduced precision it supports (OpenVINO: bf16)."""
        if m == "per_step":
            return ["no"]
        if m in RUNTIMES:
            return [a for a in autocasts if a in runtime_autocasts(m)] or ["no"]
        return autocasts

    variants = [(m, a) for m in modes for a in mode_autocasts(m)]
    for kind in cfg.kinds.split(","):
        for size in cfg.sizes.split(","):
            policy = build_policy(kind, size, device).eval()
            for spec in cfg.samplers.split(","):
                sampler, steps = spec.split(":")
                steps = int(steps)
                for batch in sorted({1, cfg.n_envs}):
                    obs = random_obs(policy, batch, device)
                    noise = torch.randn(batch, *policy.noise_shape(steps, sampler), generator=torch.Generator().manual_seed(1)).to(device)
                    ref = policy.sample_actions(obs, noise=noise, sampler=sampler, num_inference_steps=steps)
                    scale = (policy.action_normalizer.data_max - policy.action_normalizer.data_min) / 2
                    fns, info = {}, {}
                    for variant in variants:
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            run, acc = _predict_variant(policy, *variant, obs, noise, sampler, steps)
                            t0 = time.perf_counter()
                            out = run()  # first call: export / compilation / graph capture
                            first_ms = 1000 * (time.perf_counter() - t0)
                        fns[variant] = run
                        info[variant] = {"active_mode": acc.active_mode if acc else "per_step", "first_call_ms": first_ms,
                                         "max_abs_diff_vs_eager_fp32": float(((out - ref).abs() / scale).max()),
                                         "fallback_reason": acc.fallback_reason if acc else None,
                                         "warnings": [str(w.message)[:200] for w in caught]}
                    ms = interleaved_ms(fns, device, cfg.repeats, cfg.warmup)
                    base, per_step = ms.get(("eager", "no")), ms.get(("per_step", "no"))
                    for (mode, ac), m in ms.items():
                        row = {"kind": kind, "size": size, "sampler": f"{sampler}-{steps}", "batch": batch, "mode": mode,
                               "autocast": ac, **info[(mode, ac)], "ms_per_chunk": m,
                               "speedup_vs_eager": base / m if base else None, "speedup_vs_per_step": per_step / m if per_step else None}
                        rows.append(row)
                        print(f"predict {kind:6s} {size:5s} {row['sampler']:8s} b={batch:<3d} {mode}/{ac} ({row['active_mode']}): "
                              f"{m:8.1f} ms" + (f"  {base / m:4.2f}x eager" if base else "")
                              + (f"  {per_step / m:4.2f}x per-step" if per_step else "")
                              + f"  diff {row['max_abs_diff_vs_eager_fp32']:.2e}", flush=True)
    return rows


def bench_train(cfg: PerfConfig, device: torch.device) -> list[dict[str, Any]]:
    from dp_gym.ema import EMA
    from dp_gym.train import TrainConfig, _LossModule, make_optimizer, make_train_step

    rows = []
    for kind in cfg.kinds.split(","):
        for size in cfg.sizes.split(","):
            fns: dict[tuple[str, str], Any] = {}
            losses: dict[tuple[str, str], list] = {}
            for ac in [a for a in cfg.autocast.split(",") if a]:
                dtype = AUTOCAST_DTYPES[ac]
                if ac == "fp16" and device.type != "cuda":
                    continue
                torch.manual_seed(0)
                policy = build_policy(kind, size, device).train()
                fast_policy = build_policy(kind, size, device).train()
                fast_policy.load_state_dict(policy.state_dict())
                obs = random_obs(policy, cfg.train_batch, device)
                batch = {**obs, "action": (torch.rand(cfg.train_batch, policy.config.horizon, 2) * 512).to(device)}
                plain_losses, fast_losses = losses[(ac, "plain")], losses[(ac, "fast")] = [], []

                opt = torch.optim.AdamW(policy.optim_groups(), lr=1e-4, betas=(0.95, 0.999), eps=1e-8)
                ema, scaler = EMA(policy), torch.amp.GradScaler(device.type, enabled=ac == "fp16")

                def plain(policy=policy, batch=batch, opt=opt, ema=ema, scaler=scaler, dtype=dtype, out=plain_losses) -> None:
                    # PyTorch's own layers and AdamW's default implementation; the loss read
                    # back and checked every step
                    torch.manual_seed(len(out))
                    with pytorch_kernels():
                        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                            loss = policy.compute_loss(batch)
                        if not torch.isfinite(loss):
                            raise FloatingPointError("non-finite loss")
                        opt.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    ema.update(policy)
                    out.append(loss.item())

                opt_fast = make_optimizer(fast_policy, TrainConfig(lr=1e-4))
                step_fast = make_train_step(_LossModule(fast_policy), fast_policy, opt_fast,
                                            torch.optim.lr_scheduler.LambdaLR(opt_fast, lambda s: 1.0), EMA(fast_policy),
                                            torch.amp.GradScaler(device.type, enabled=ac == "fp16"), dtype, device)

                def fast(step=step_fast, batch=batch, out=fast_losses) -> None:
                    torch.manual_seed(len(out))
                    out.append(step(batch))

                fns[(ac, "plain")], fns[(ac, "fast")] = plain, fast
                n_params = sum(p.numel() for p in policy.parameters()) / 1e6
            # every variant of every autocast in one round-robin, so their ratios share the load
            ms = interleaved_ms(fns, device, cfg.train_steps, cfg.warmup)
            for (ac, name), m in ms.items():
                ref = [float(x) for x in losses[(ac, "plain")]]
                diff = max(abs(a - float(b)) for a, b in zip(ref, losses[(ac, name)]))
                row = {"kind": kind, "size": size, "autocast": ac, "batch": cfg.train_batch, "variant": name,
                       "ms_per_step": m, "samples_per_s": cfg.train_batch / (m / 1000),
                       "speedup_vs_plain": ms[(ac, "plain")] / m,
                       "speedup_vs_plain_fp32": ms[("no", "plain")] / m if ("no", "plain") in ms else None,
                       "max_loss_diff_vs_plain": diff, "params_M": n_params}
                rows.append(row)
                print(f"train   {kind:6s} {size:5s} {ac:4s} batch {cfg.train_batch} {name:5s}: {row['samples_per_s']:.1f} samples/s "
                      f"({row['speedup_vs_plain']:.2f}x plain, {_ratio(row['speedup_vs_plain_fp32'])} plain float32, "
                      f"loss diff {diff:.1e})", flush=True)
    return rows


def bench_env(cfg: PerfConfig) -> list[dict[str, Any]]:
    import gymnasium as gym

    from dp_gym.envs.pusht import PushTEnv, _GymPushTEnv

    class PreviousPushTEnv(PushTEnv):
        """The env as before: gym-pusht's coverage, computed by its step and again by _get_info,
        and gym-pusht's copy of the canvas for pixel observations."""

        def _get_coverage(self) -> float:
            return _GymPushTEnv._get_coverage(self)

        def _render_image(self, size: int, render_action: bool) -> np.ndarray:
            return self._get_img(self._draw(), width=size, height=size, render_action=render_action)

    rows = []
    for obs_type in ("keypoints", "pixels_agent_pos"):
        envs = {name: gym.vector.SyncVectorEnv([lambda c=cls: c(obs_type=obs_type) for _ in range(cfg.n_envs)],
                                               autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
                for name, cls in (("ours", PushTEnv), ("previous", PreviousPushTEnv))}
        for env in envs.values():
            env.reset(seed=list(range(cfg.n_envs)))
        rng = np.random.default_rng(0)
        wall = {name: 0.0 for name in envs}
        for _ in range(cfg.env_steps):
            action = rng.uniform(100, 400, size=(cfg.n_envs, 2)).astype(np.float32)
            for name, env in envs.items():
                t0 = time.perf_counter()
                env.step(action)
                wall[name] += time.perf_counter() - t0
        for env in envs.values():
            env.close()
        sps = {name: cfg.n_envs * cfg.env_steps / w for name, w in wall.items()}
        rows.append({"env": f"PushT {obs_type}", "n_envs": cfg.n_envs, "env_steps_per_s": sps["ours"],
                     "env_steps_per_s_previous": sps["previous"], "speedup": sps["ours"] / sps["previous"]})
        print(f"env     PushT {obs_type}: {sps['ours']:.0f} env-steps/s ({cfg.n_envs} envs), "
              f"{rows[-1]['speedup']:.2f}x the previous env", flush=True)
    return rows


def _ratio(x: float | None) -> str:
    return f"{x:.2f}×" if x else "–"


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    bf16 = f"; bfloat16 units: {', '.join(m['cpu_bf16'])}" if m.get("cpu_bf16") else ""
    lines = ["# dp_gym performance", "", f"Machine: {m['cpu']} ({m['cpu_count']} CPUs, torch threads {m['torch_threads']}{bf16})"
             + (f", GPU {m['gpu']}" if "gpu" in m else "") + f"; torch {m['torch']}; device `{m['device']}`.", "",
             f"Command: `{res['command']}`", ""]
    if res["predict"]:
        lines += ["## Predict latency per chunk (median ms; encoder + full denoising loop; variants interleaved)", "",
                  "| policy | size | sampler | batch | mode | autocast | runs as | ms/chunk | speed-up vs eager fp32 "
                  "| speed-up vs per-step | first call ms | max abs diff vs eager fp32 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["predict"]:
            lines.append(f"| {r['kind']} | {r['size']} | {r['sampler']} | {r['batch']} | {r['mode']} | {r['autocast']} | {r['active_mode']} "
                         f"| {r['ms_per_chunk']:.1f} | {_ratio(r['speedup_vs_eager'])} | {_ratio(r['speedup_vs_per_step'])} "
                         f"| {r['first_call_ms']:.0f} | {r['max_abs_diff_vs_eager_fp32']:.1e} |")
        lines.append("")
    if res["train"]:
        lines += ["## Training throughput (variants interleaved, same weights and batches)", "",
                  "| policy | size | params | autocast | batch | variant | ms/step | samples/s | speed-up vs plain "
                  "| speed-up vs plain float32 | max loss diff vs plain |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["train"]:
            lines.append(f"| {r['kind']} | {r['size']} | {r['params_M']:.1f}M | {r['autocast']} | {r['batch']} | {r['variant']} "
                         f"| {r['ms_per_step']:.0f} | {r['samples_per_s']:.1f} | {_ratio(r['speedup_vs_plain'])} "
                         f"| {_ratio(r.get('speedup_vs_plain_fp32'))} | {r['max_loss_diff_vs_plain']:.1e} |")
        lines.append("")
    if res["env"]:
        lines += ["## Environment speed (steps interleaved)", "", "| env | envs | env-steps/s | previous env: env-steps/s | speed-up |",
                  "|---|---|---|---|---|"]
        for r in res["env"]:
            lines.append(f"| {r['env']} | {r['n_envs']} | {r['env_steps_per_s']:.0f} | {r['env_steps_per_s_previous']:.0f} | {_ratio(r['speedup'])} |")
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
