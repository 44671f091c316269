"""Success against the number of sampler steps for a diffusion policy: the speed / quality curve.

Scores one checkpoint (a path or ``zoo:<task>/<policy>``) with DDIM at each step count and with the
paper's DDPM-100, on the selection seeds by default (a setting is a choice, so it is made there),
and plots score, success and predict latency per chunk against the number of denoiser passes.

    python benchmarks/sampler_steps.py --task pusht_keypoints --policy zoo:pusht_keypoints/diffusion \
        --out-dir benchmarks/results/pusht_keypoints/diffusion/sampler_steps
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dp_gym import benchmark
from dp_gym.checkpoint import atomic_write, atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="task name, e.g. pusht_keypoints")
    p.add_argument("--policy", required=True, help="checkpoint folder or zoo:<task>/<policy> of a diffusion policy")
    p.add_argument("--ddim-steps", default="1,2,4,8,10,16", help="comma list of DDIM step counts")
    p.add_argument("--ddpm-steps", type=int, default=100, help="DDPM step count (0: skip DDPM)")
    p.add_argument("--seeds", default="200000:200050", help="episode seeds (default: the selection seeds)")
    p.add_argument("--n-envs", type=int, default=10, help="parallel envs")
    p.add_argument("--num-threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out-dir", required=True, help="folder for the per-setting results, curve.json and curve.png")
    a = p.parse_args()
    out = Path(a.out_dir)
    settings = [("ddim", int(s)) for s in a.ddim_steps.split(",")] + ([("ddpm", a.ddpm_steps)] if a.ddpm_steps else [])
    rows = []
    for sampler, steps in settings:
        sub = out / f"{sampler}{steps}"
        if not (sub / "results.json").is_file():  # a finished setting is read back, so a killed run resumes
            rc = benchmark.main(["--task", a.task, "--policy", f"{sampler}{steps}={a.policy}", "--sampler", sampler,
                                 "--num-inference-steps", str(steps), "--seeds", a.seeds, "--n-envs", str(a.n_envs),
                                 "--videos", "0", "--latency-repeats", "10", "--num-threads", str(a.num_threads), "--out-dir", str(sub)])
            if rc:
                raise SystemExit(f"the benchmark of {sampler}-{steps} failed (exit status {rc}, see above)")
        r = benchmark.read_result(sub)
        rows.append({"sampler": sampler, "steps": steps, "mean_max_reward": r["mean_max_reward"], "success_rate": r["success_rate"],
                     "success_ci95": r["success_ci95"], "predict_latency_ms_median": r["predict_latency_ms_median"],
                     "episodes": r["episodes"]})
    atomic_write_json(out / "curve.json", {"task": a.task, "policy": a.policy, "seeds": a.seeds, "rows": rows})
    plot(rows, out / "curve.png", f"{a.task}: {a.policy}, seeds {a.seeds}")
    for r in rows:
        print(f"{r['sampler']}-{r['steps']:<4d} score {r['mean_max_reward']:.3f} success {r['success_rate']:.2f} "
              f"{r['predict_latency_ms_median']:.1f} ms/chunk")


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, lat) = plt.subplots(1, 2, figsize=(9, 3.6))
    for sampler, marker in (("ddim", "o-"), ("ddpm", "s")):
        rs = [r for r in rows if r["sampler"] == sampler]
        if not rs:
            continue
        x = [r["steps"] for r in rs]
        ax.plot(x, [r["mean_max_reward"] for r in rs], marker, label=f"{sampler} score")
        ax.errorbar(x, [r["success_rate"] for r in rs], fmt=marker, alpha=0.6, capsize=3, label=f"{sampler} success (95% CI)",
                    yerr=[[r["success_rate"] - r["success_ci95"][0] for r in rs], [r["success_ci95"][1] - r["success_rate"] for r in rs]])
        lat.plot(x, [r["predict_latency_ms_median"] for r in rs], marker, label=sampler)
    for axis in (ax, lat):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("denoiser passes per chunk")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    lat.set_ylabel("predict ms per chunk (batch 1)")
    lat.set_yscale("log")
    lat.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


if __name__ == "__main__":
    main()
