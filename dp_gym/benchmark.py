"""Evaluate policies on a task over seeded episodes and compare them.

    python -m dp_gym.benchmark --task pusht_keypoints \
        --policy dp=runs/pusht_kp/checkpoints/latest --seeds 100000:100050 --n-envs 10 \
        --out-dir benchmarks/results/pusht_keypoints/diffusion/my_run

Per policy: episodes, seeds, mean max-reward (Push-T: the coverage score), success rate with a 95%
Wilson interval, mean episode length, predict latency (median ms per chunk at batch 1, and per
batched chunk during the rollouts). Writes ``results.json``, ``results.md``, ``scores.png`` and
videos of the first episodes into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dp_gym.agent import PolicyAgent
from dp_gym.checkpoint import atomic_write, atomic_write_json, atomic_write_bytes, load_policy
from dp_gym.evaluation import evaluate_agent
from dp_gym.policies.diffusion.accelerate import MODES
from dp_gym.tasks import Task, get_task, task_names
from dp_gym.utils.cli import build_parser as build_parser_for, command_line, config_from_namespace, option, run_cli
from dp_gym.utils.machine import machine_description


@dataclass
class BenchmarkConfig:
    """Every benchmark option; each field is a command-line flag (``--field-name``)."""

    task: str = option("pusht_keypoints", "task to evaluate on", choices=task_names)
    policies: list[str] = option([], "NAME=CHECKPOINT_DIR or NAME=zoo:<task>/<policy> (repeatable)", flag="--policy",
                                 metavar="NAME=CHECKPOINT")
    seeds: str = option("100000:100050", "episode seeds, start:stop or a comma list: the paper's test seeds unless "
                        "given (with --suite: the suite's)")
    n_envs: int = option(10, "episodes run in parallel (vector env size)")
    vector: str = option("sync", "vector env: in-process or one process per env", choices=("sync", "async"))
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ...")
    sampler: str | None = option(None, "diffusion only: sampler instead of the checkpoint's", choices=("ddpm", "ddim"))
    num_inference_steps: int | None = option(None, "diffusion only: denoising steps instead of the checkpoint's")
    n_action_steps: int | None = option(None, "diffusion only: actions executed per sampled chunk (Ta) instead of the "
                                        "checkpoint's; the horizon must cover To - 1 + Ta")
    noise_scale: float | None = option(None, "diffusion only: scale the sampling noise (temperature; 1 = as trained, "
                                       "0 = DDIM from x_T = 0 / DDPM without per-step noise)")
    accelerate: str = option("auto", "diffusion only: how the denoising loop runs; auto: the agent's default "
                             "(OpenVINO on CPU, else ONNX Runtime); falls back with the reason",
                             choices=("auto", *MODES))
    autocast: str = option("no", "diffusion only: autocast dtype; on CPU, bf16 runs OpenVINO in bfloat16 "
                                         "(faster for large UNets, actions within ~1e-2 of float32's)", choices=("no", "bf16", "fp16"))
    deterministic: bool = option(True, "reproducible sampling noise (per seed)", invert="--stochastic")
    videos: int = option(3, "record videos of the first N episodes per policy")
    latency_repeats: int = option(20, "repeats of the batch-1 predict latency measurement; 0: skip it")
    out_dir: str = option("benchmarks/results/latest", "results folder; with --suite unless given: benchmarks/results/suite_NAME")
    num_threads: int = option(0, "torch CPU threads; 0: torch's default")
    resume: bool = option(False, "keep <out-dir>/episodes.jsonl and run only the episodes it lacks; with --suite: "
                                   "skip entries whose result was made by the same weights and options")

    def __post_init__(self) -> None:
        for name, low in (("n_envs", 1), ("videos", 0), ("latency_repeats", 0), ("num_threads", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("num_inference_steps", "n_action_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.noise_scale is not None and not (math.isfinite(self.noise_scale) and self.noise_scale >= 0):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {self.noise_scale}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device} requested but CUDA is not available")
        parse_seeds(self.seeds)  # refuse an empty or malformed seed range now, not after loading policies


def parse_seeds(spec: str) -> list[int]:
    """``"start:stop"`` (stop excluded) or a comma list; an empty or malformed spec raises
    ``ValueError``.

    Example:
        >>> parse_seeds("5:8"), parse_seeds("1,4")
        ([5, 6, 7], [1, 4])
    """
    try:
        if ":" in spec:
            a, b = spec.split(":")
            seeds = list(range(int(a), int(b)))
        else:
            seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"seeds must be 'start:stop' or a comma list of integers, got {spec!r}") from None
    if not seeds:
        raise ValueError(f"seeds {spec!r} select no episode (start:stop needs start < stop)")
    return seeds


def p_k_columns(results: dict[str, dict]) -> list[str]:
    """The ``p1..pK`` keys present in any policy's results, in order of k (empty for tasks
    without a count metric)."""
    return sorted({k for r in results.values() for k in r if k[:1] == "p" and k[1:].isdigit()}, key=lambda k: int(k[1:]))


def read_result(out_dir: str | Path) -> dict[str, Any]:
    """The result of the one policy a ``results.json`` in ``out_dir`` holds (its first one)."""
    return next(iter(json.loads((Path(out_dir) / "results.json").read_text())["results"].values()))


def task_score(result: dict[str, Any]) -> tuple[str, float]:
    """The headline score of one policy's result: ``("pK", value)`` for tasks with a count metric
    (the fraction of episodes completing all K sub-tasks), else ``("mean_max_reward", value)``."""
    pk = p_k_columns({"": result})
    return (pk[-1], result[pk[-1]]) if pk else ("mean_max_reward", result["mean_max_reward"])


def plot(results: dict[str, dict], path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(names), 3.6))
    pk = p_k_columns(results)
    if pk:  # multi-task count metric (kitchen): p1..pK per policy, grouped
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            axes[0].bar(np.arange(len(pk)) + j * width, [results[name].get(k, 0.0) for k in pk], width, label=name)
        axes[0].set_xticks(np.arange(len(pk)) + 0.4 - width / 2, pk)
        axes[0].legend(fontsize=7)
        axes[0].set_title("fraction of episodes with >= k tasks")
    else:
        score = [results[n]["mean_max_reward"] for n in names]
        sd = [float(results[n]["max_reward_std"]) / math.sqrt(results[n]["episodes"]) for n in names]
        axes[0].bar(names, score, yerr=sd, capsize=4, color="tab:blue")
        axes[0].set_title("mean max reward (±s.e.)")
    axes[0].set_ylim(0, 1.05)
    sr = [results[n]["success_rate"] for n in names]
    err = np.array([[s - results[n]["success_ci95"][0], results[n]["success_ci95"][1] - s] for n, s in zip(names, sr)], dtype=float).T.clip(0)
    axes[1].bar(names, sr, yerr=err, capsize=4, color="tab:green")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("success rate (95% Wilson)")
    fig.suptitle(task)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def markdown_table(results: dict[str, dict]) -> str:
    """Results table; tasks with a count metric (kitchen) get p1..pK and mean-completed columns
    instead of the mean max reward."""
    pk = p_k_columns(results)
    score_head = " | ".join(pk + ["mean completed"]) if pk else "mean max reward"
    lines = [f"| policy | episodes | {score_head} | success rate (95% CI) | mean ep. length | predict ms/chunk (batch 1) | rollout ms/chunk (batched) |",
             "|---|---|" + "---|" * (len(pk) + 1 if pk else 1) + "---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'].replace('|', '/')} |")
            continue
        lat = r.get("predict_latency_ms_median")
        roll = r.get("rollout_chunk_ms_median")
        score = " | ".join([f"{r.get(k, float('nan')):.2f}" for k in pk] + [f"{r.get('mean_completed', float('nan')):.2f}"]) if pk else f"{r['mean_max_reward']:.3f}"
        lines.append(
            f"| {name} | {r['episodes']} | {score} | {r['success_rate']:.2f} "
            f"[{r['success_ci95'][0]:.2f}, {r['success_ci95'][1]:.2f}] | {r['mean_episode_length']:.1f} | "
            f"{'' if lat is None else f'{lat:.1f}'} | {'' if roll is None else f'{roll:.1f}'} |"
        )
    return "\n".join(lines)


def policies_with(capability: str) -> str:
    """The registered policy types that have ``capability`` (a :class:`~dp_gym.policies.policy.Policy`
    capability attribute), for error messages: ``"diffusion"``, ``"a, b"``, or ``"no"``."""
    from dp_gym.policies import registered_policies

    return ", ".join(n for n, cls in registered_policies().items() if getattr(cls, capability)) or "no"


def with_action_horizon(policy: torch.nn.Module, n_action_steps: int) -> Any:
    """The policy's config with ``n_action_steps`` (Ta, the actions run per sampled chunk) replaced.

    Only a policy that ``samples_horizon`` (Tp) and executes a window of it can change its Ta after
    training; the others (the BC / IBC heads) predict exactly their trained Ta actions.
    ``dataclasses.replace`` re-runs the config's validation (Tp must cover To - 1 + Ta)."""
    if not policy.samples_horizon:
        raise ValueError(f"--n-action-steps applies to {policies_with('samples_horizon')} policies only (they sample a "
                         f"whole horizon); a {policy.policy_type!r} policy predicts exactly its trained "
                         f"{policy.config.n_action_steps} actions")
    return dataclasses.replace(policy.config, n_action_steps=n_action_steps)


# Options whose change alters every episode: a --resume must repeat them.
RESUME_FIXED = ("task", "device", "sampler", "num_inference_steps", "n_action_steps", "noise_scale", "accelerate",
                "autocast", "deterministic")


def load_episode_log(path: Path) -> dict[tuple[str, str], dict[int, dict]]:
    """Finished episodes from ``episodes.jsonl``: ``(policy, checkpoint) → {seed: record}``. Errored
    episodes are left out (a resumed run tries them again); a line torn by a kill is ignored."""
    done: dict[tuple[str, str], dict[int, dict]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # the last line of a killed run can be incomplete
        if isinstance(rec, dict) and "error" not in rec and {"policy", "checkpoint", "seed"} <= rec.keys():
            done.setdefault((rec.pop("policy"), rec.pop("checkpoint")), {})[int(rec["seed"])] = rec
    return done


def _policy_name(spec: str) -> tuple[str, str]:
    name, _, path = spec.rpartition("=")
    return name or Path(path).parent.parent.name or Path(path).name, path


def _evaluate_one(cfg: BenchmarkConfig, task: Task, name: str, path: str, seeds: list[int], out: Path,
                  done: dict[int, dict], log: Any) -> dict[str, Any]:
    policy, meta = load_policy(path, cfg.device)
    if meta.get("task") not in (None, cfg.task):
        print(f"warning: {name} was trained on task {meta.get('task')!r}, evaluating on {cfg.task!r}")
    if cfg.n_action_steps is not None:
        policy.config = with_action_horizon(policy, cfg.n_action_steps)
    if cfg.noise_scale is not None and not policy.accepts_noise_scale:
        raise ValueError(f"--noise-scale applies to {policies_with('accepts_noise_scale')} policies only; "
                         f"{name} is a {policy.policy_type!r} policy")
    agent = PolicyAgent(policy, device=cfg.device)
    if cfg.sampler and policy.samplers:
        if cfg.sampler not in policy.samplers:
            raise ValueError(f"--sampler {cfg.sampler}: a {policy.policy_type!r} policy samples with {list(policy.samplers)}")
        agent.sample_kwargs["sampler"] = cfg.sampler
    if cfg.num_inference_steps and policy.accepts_step_count:
        agent.sample_kwargs["num_inference_steps"] = cfg.num_inference_steps
    if cfg.noise_scale is not None:
        agent.sample_kwargs["noise_scale"] = cfg.noise_scale
    if policy.accelerable and (cfg.accelerate != "auto" or cfg.autocast != "no"):
        from dp_gym.policies.diffusion.accelerate import default_mode

        acc = agent.accelerate(default_mode(cfg.device) if cfg.accelerate == "auto" else cfg.accelerate, cfg.autocast)
        print(f"[{name}] sampling: {acc.active_mode}, autocast {cfg.autocast}"
              + (f" (fallback: {acc.fallback_reason})" if acc.fallback_reason else ""))
    ignored = [flag for flag, given, applies in (("--sampler", cfg.sampler, policy.samplers),
                                                  ("--num-inference-steps", cfg.num_inference_steps, policy.accepts_step_count))
               if given and not applies]
    if ignored:
        print(f"[{name}] note: {' / '.join(ignored)} do not apply to a {policy.policy_type!r} policy; ignored")
    n_done = sum(s in done for s in seeds)
    print(f"[{name}] {path}: {len(seeds)} episodes" + (f" ({n_done} already done)" if n_done else "")
          + f", {cfg.n_envs} envs, sampler {agent.sample_kwargs or 'from checkpoint'}")

    def record(rec: dict) -> None:
        log.write(json.dumps({"policy": name, "checkpoint": path, **rec}) + "\n")
        log.flush()

    res = evaluate_agent(agent, task, seeds, cfg.n_envs, cfg.vector, cfg.deterministic, cfg.videos, cfg.latency_repeats,
                         done=done, on_episode=record, progress=True, video_path=lambda seed: out / f"{name}_seed{seed}.mp4")
    if agent.accelerator is not None:  # how the chunks (and the latency) were computed
        res["sampling_mode"] = {"active": agent.accelerator.active_mode, "fallback_reason": agent.accelerator.fallback_reason}
    # videos of the first episodes: written now, or by the run a --resume continues
    res["videos"] = [f"{name}_seed{s}.mp4" for s in seeds[:cfg.videos] if (out / f"{name}_seed{s}.mp4").is_file()]
    res.update(checkpoint=str(path), train_step=meta.get("train_step"),
               sampler=agent.sample_kwargs.get("sampler", policy.config.__dict__.get("sampler")),
               num_inference_steps=agent.sample_kwargs.get("num_inference_steps", policy.config.__dict__.get("num_inference_steps")),
               n_action_steps=policy.config.n_action_steps,
               noise_scale=agent.sample_kwargs.get("noise_scale", 1.0) if policy.accepts_noise_scale else None)
    pk = "".join(f", p{k} {res[f'p{k}']:.2f}" for k in range(1, task.count_max + 1) if f"p{k}" in res)
    errs = f", {res['errored_episodes']} errored" if res.get("errored_episodes") else ""
    print(f"[{name}] mean max reward {res['mean_max_reward']:.3f}{pk}, success {res['success_rate']:.2f} "
          f"[{res['success_ci95'][0]:.2f}, {res['success_ci95'][1]:.2f}]{errs}")
    return res


def run(cfg: BenchmarkConfig, command: str = "") -> dict[str, dict]:
    """Evaluate every policy of ``cfg``; ``command`` (the CLI line) is recorded in ``results.json``.

    Each finished episode is appended to ``<out>/episodes.jsonl``; with ``cfg.resume`` the episodes
    found there are kept and only the missing ones run. A policy that fails (bad checkpoint, ...)
    gets ``{"error": ...}`` in the results and the others still run."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if not cfg.policies:
        raise ValueError("give at least one --policy NAME=CHECKPOINT")
    task = get_task(cfg.task)
    seeds = parse_seeds(cfg.seeds)
    specs = [_policy_name(spec) for spec in cfg.policies]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique, got {names}")
    out = Path(cfg.out_dir)
    config_file, log_path = out / "benchmark_config.json", out / "episodes.jsonl"
    done: dict[tuple[str, str], dict[int, dict]] = {}
    if cfg.resume and config_file.exists():
        saved = json.loads(config_file.read_text())
        diffs = [f"--{k.replace('_', '-')}: saved {saved.get(k)!r}, now {getattr(cfg, k)!r}"
                 for k in RESUME_FIXED if saved.get(k) != getattr(cfg, k)]
        if diffs:
            raise ValueError(f"--resume in {out} with options that change the episodes ({'; '.join(diffs)}); "
                             "repeat them or use a new --out-dir")
        done = load_episode_log(log_path)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config_file, dataclasses.asdict(cfg))
    if not cfg.resume:
        atomic_write_bytes(log_path, b"")
    elif log_path.exists() and not log_path.read_bytes().endswith(b"\n"):  # a line torn by a kill: drop it
        text = log_path.read_bytes()
        atomic_write_bytes(log_path, text[: text.rfind(b"\n") + 1])
    results: dict[str, dict] = {}
    with open(log_path, "a") as log:
        for name, path in specs:
            try:
                results[name] = _evaluate_one(cfg, task, name, path, seeds, out, done.get((name, path), {}), log)
            except Exception as e:  # one bad policy must not cost the others their results
                results[name] = {"error": f"{type(e).__name__}: {e}", "checkpoint": path}
                print(f"[{name}] failed: {type(e).__name__}: {e}", file=sys.stderr)
    machine = machine_description(cfg.device)
    atomic_write_json(out / "results.json", {"config": dataclasses.asdict(cfg), "command": command, "machine": machine,
                                             "results": results})
    table = markdown_table(results)
    atomic_write_bytes(out / "results.md", (f"# {cfg.task}\n\n{table}\n").encode())
    if any("error" not in r for r in results.values()):
        plot({k: r for k, r in results.items() if "error" not in r}, out / "scores.png", cfg.task)
    print(f"\n{table}\n\nresults: {out / 'results.json'}, {out / 'results.md'}, per episode: {log_path}")
    return results


def build_parser() -> argparse.ArgumentParser:
    p = build_parser_for(BenchmarkConfig, description=__doc__, prog="python -m dp_gym.benchmark")
    p.add_argument("--suite", default=None,
                   help="evaluate every entry of a suite (benchmarks/suites/NAME.json, e.g. 'zoo') instead of --task/--policy")
    p.add_argument("--suite-jobs", type=int, default=1, metavar="N",
                   help="with --suite: evaluate N entries at once, each in its own process (default: 1)")
    p.set_defaults(seeds=None, out_dir=None)  # unset: the config's defaults, or the suite's
    return p


def config_from_args(a: argparse.Namespace) -> BenchmarkConfig:
    a = argparse.Namespace(**{**vars(a), "seeds": a.seeds or BenchmarkConfig.seeds, "out_dir": a.out_dir or BenchmarkConfig.out_dir})
    return config_from_namespace(BenchmarkConfig, a)


def parse_args(argv: list[str] | None = None) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` of a command line (``--suite`` is not a config field)."""
    return config_from_args(build_parser().parse_args(argv))


def _main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    if a.suite:
        from dp_gym.suite import load_suite, run_suite

        run_suite(load_suite(a.suite), seeds=a.seeds, out_dir=a.out_dir, n_envs=a.n_envs, num_threads=a.num_threads, command=command_line("dp_gym.benchmark", argv), jobs=a.suite_jobs, resume=a.resume)
        return 0
    cfg = config_from_args(a)
    from dp_gym.zoo import get_entry

    for _, path in map(_policy_name, cfg.policies):
        if path.startswith("zoo:"):
            get_entry(path)  # an unknown zoo name fails here, naming the entries there are
    missing = [path for _, path in map(_policy_name, cfg.policies)
               if not path.startswith("zoo:") and not (Path(path) / "model.safetensors").is_file() and not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint not found: {', '.join(missing)} (a --policy needs a folder holding model.safetensors)")
    results = run(cfg, command=command_line("dp_gym.benchmark", argv))
    failed = [name for name, r in results.items() if "error" in r]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} policies failed ({', '.join(failed)}); "
                           f"the others' results are in {cfg.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
