"""Benchmark suites: many (task, policy) entries evaluated by one command into one table.

A suite is a JSON file in ``benchmarks/suites/<name>.json`` (or any path)::

    {"name": "zoo",
     "description": "every shipped policy",
     "seeds": "100000:100050",
     "n_envs": 10,
     "entries": ["pusht_keypoints/diffusion", "pusht_keypoints/bc"],   # omitted: every zoo entry
     "paper": {"pusht_keypoints": {"metric": "mean_max_reward", "value": 0.91, "source": "..."}}}

``python -m dp_gym.benchmark --suite zoo [--seeds a:b] [--out-dir D]`` evaluates each entry with the
benchmark arguments its model card declares (``card.json`` ``benchmark_args``) into
``D/<task>/<policy>/`` and writes ``D/results.json``, ``D/results.md`` and ``D/scores.png``
(tasks × policies, 95% intervals). ``python -m dp_gym.suite render-readme D/results.json README.md``
puts the table between the README's ``<!-- results:begin -->`` / ``<!-- results:end -->`` markers, so
the README cannot drift from the measured JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dp_gym.benchmark import read_result, task_score
from dp_gym.checkpoint import atomic_write, atomic_write_bytes, atomic_write_json

SUITES_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "suites"
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
POLICY_ORDER = ("diffusion", "bc", "ibc")


def load_suite(name_or_path: str) -> dict[str, Any]:
    """A suite by name (``benchmarks/suites/<name>.json``) or by path to its JSON file."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = SUITES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.json")) if SUITES_DIR.is_dir() else []
        raise FileNotFoundError(f"no suite {name_or_path!r} (looked for {path}); known suites: {', '.join(known) or 'none'}")
    suite = json.loads(path.read_text())
    suite.setdefault("name", path.stem)
    return suite


def suite_entries(suite: dict[str, Any]) -> list[Any]:
    """The suite's zoo entries, in its order (every zoo entry when it names none)."""
    from dp_gym.zoo import get_entry, list_entries

    if "entries" in suite:
        return [get_entry(name) for name in suite["entries"]]
    return list_entries()


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """What the suite table keeps of one benchmark result (no per-episode lists)."""
    keep = ("episodes", "mean_max_reward", "max_reward_std", "success_rate", "success_ci95", "mean_episode_length",
            "predict_latency_ms_median", "sampler", "num_inference_steps", "n_action_steps", "mean_completed")
    if "error" in res:  # the entry failed (its benchmark records why)
        return {"error": res["error"]}
    return {k: res[k] for k in res if k in keep or (k[:1] == "p" and k[1:].isdigit())}


RUN_KEY_FILE = "suite_run_key.json"


def run_key(entry: Any, argv: list[str]) -> dict[str, Any]:
    """What an entry's result depends on: its weights (SHA-256 of ``model.safetensors``), the
    benchmark command line and the dp_gym version. ``resume`` reuses a result only when it matches."""
    import hashlib

    import dp_gym

    return {"model_sha256": hashlib.sha256((entry.path / "model.safetensors").read_bytes()).hexdigest(),
            "argv": argv, "dp_gym": dp_gym.__version__}


def _reusable(out: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The entry's finished result in ``out`` if it was made by ``key``'s weights and command."""
    try:
        if json.loads((out / RUN_KEY_FILE).read_text()) != key:
            return None
        return read_result(out)
    except (OSError, ValueError, StopIteration):
        return None


def run_suite(suite: dict[str, Any], seeds: str | None = None, out_dir: str | Path | None = None,
              n_envs: int | None = None, num_threads: int = 0, command: str = "", jobs: int = 1,
              resume: bool = False) -> dict[str, Any]:
    """Evaluate every entry of ``suite`` and write the suite's results, table and plot. With
    ``jobs`` > 1 the entries run as that many ``python -m dp_gym.benchmark`` processes at once
    (the same command lines, each recorded in its entry's results.json). With ``resume`` an entry
    whose folder holds a result of the same weights and command line (:func:`run_key`) is not run
    again, so a killed suite, or one after a single entry is re-shipped, redoes only what changed."""
    import subprocess

    from tqdm import tqdm

    from dp_gym import benchmark

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    seeds = seeds or suite.get("seeds", "100000:100050")
    out = Path(out_dir or f"benchmarks/results/suite_{suite['name']}")
    entries = suite_entries(suite)
    if not entries:
        raise ValueError(f"suite {suite['name']!r} has no entries (is the zoo empty?)")
    argvs = {}
    for entry in entries:
        argvs[entry.name] = ["--task", entry.task, "--policy", f"{entry.policy}=zoo:{entry.name}", *entry.card.get("benchmark_args", []),
                             "--seeds", seeds, "--n-envs", str(n_envs or suite.get("n_envs", 10)), "--videos", "0",
                             "--out-dir", str(out / entry.task / entry.policy)] + (["--num-threads", str(num_threads)] if num_threads else [])
    bar = tqdm(total=len(entries), desc=f"suite {suite['name']}", unit="entry")
    results: dict[str, dict[str, Any]] = {}
    keys = {entry.name: run_key(entry, argvs[entry.name]) for entry in entries}
    for entry in entries:
        entry_out = out / entry.task / entry.policy
        if resume and (res := _reusable(entry_out, keys[entry.name])) is not None:
            results[entry.name] = res
            bar.update(1)
        else:  # a result made by other weights or options must not survive beside the new run
            (entry_out / RUN_KEY_FILE).unlink(missing_ok=True)
    todo = [entry for entry in entries if entry.name not in results]
    if jobs == 1:
        for entry in todo:
            argv = argvs[entry.name]
            results[entry.name] = benchmark.run(benchmark.parse_args(argv), command=benchmark.command_line("dp_gym.benchmark", argv))[entry.policy]
            bar.update(1)
    else:
        pending, running = list(todo), {}
        while pending or running:
            while pending and len(running) < jobs:
                entry = pending.pop(0)
                running[entry.name] = (entry, subprocess.Popen([sys.executable, "-m", "dp_gym.benchmark", *argvs[entry.name]]))
            for name, (entry, proc) in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    res_dir = out / entry.task / entry.policy
                    results[name] = (read_result(res_dir) if (res_dir / "results.json").is_file()
                                     else {"error": f"benchmark exited with status {proc.returncode}"})
                    bar.update(1)
            if running:
                time.sleep(1)
    bar.close()
    for entry in todo:
        if "error" not in results[entry.name]:
            atomic_write_json(out / entry.task / entry.policy / RUN_KEY_FILE, keys[entry.name])
    table: dict[str, dict[str, Any]] = {}
    for entry in entries:  # in the suite's order, whatever order they finished in
        table.setdefault(entry.task, {})[entry.policy] = summary(results[entry.name])
    record = {"suite": suite["name"], "seeds": seeds, "command": command, "paper": suite.get("paper", {}), "results": table}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", record)
    atomic_write_bytes(out / "results.md", (f"# Suite {suite['name']}, seeds {seeds}\n\n{markdown(record)}\n").encode())
    plot(record, out / "scores.png")
    print(markdown(record))
    return record


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "–"
    if "error" in r:
        return "failed"
    lo, hi = r["success_ci95"]
    name, value = task_score(r)
    score = f"{value:.3f}" if name == "mean_max_reward" else f"{name} {value:.2f}"
    return f"{score} · {r['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def markdown(record: dict[str, Any]) -> str:
    """Tasks × policies: score (mean max reward, or p_K for count tasks) · success [95% Wilson]."""
    policies = [p for p in POLICY_ORDER if any(p in row for row in record["results"].values())]
    policies += sorted({p for row in record["results"].values() for p in row} - set(policies))
    lines = [f"| task | {' | '.join(policies)} | paper (diffusion) |", "|---|" + "---|" * (len(policies) + 1)]
    for task, row in record["results"].items():
        paper = record.get("paper", {}).get(task)
        lines.append(f"| {task} | " + " | ".join(_cell(row.get(p)) for p in policies) + f" | {paper['text'] if paper else '–'} |")
    lines += ["", f"Seeds {record['seeds']}, one episode each. Cells: score (Push-T / robosuite: mean max reward; kitchen: "
                  "fraction of episodes completing all 4 tasks) · success rate [95% Wilson interval]."]
    return "\n".join(lines)


def plot(record: dict[str, Any], path: Path) -> None:
    """Success rate per task, one bar per policy, with 95% Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(record["results"])
    policies = [p for p in POLICY_ORDER if any(p in record["results"][t] for t in tasks)]
    fig, ax = plt.subplots(figsize=(2 + 1.8 * len(tasks), 3.6))
    width = 0.8 / max(1, len(policies))
    for j, pol in enumerate(policies):
        xs, ys, err = [], [], []
        for i, t in enumerate(tasks):
            r = record["results"][t].get(pol)
            if r is None or "error" in r:
                continue
            xs.append(i + j * width)
            ys.append(r["success_rate"])
            err.append([r["success_rate"] - r["success_ci95"][0], r["success_ci95"][1] - r["success_rate"]])
        ax.bar(xs, ys, width, yerr=np.clip(np.array(err).T, 0, None) if err else None, capsize=3, label=pol)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=15, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson)")
    ax.set_title(f"suite {record['suite']}, seeds {record['seeds']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def render_readme(results_json: str | Path, readme: str | Path) -> None:
    """Replace the README's table between the results markers with the one from ``results_json``."""
    record = json.loads(Path(results_json).read_text())
    text = Path(readme).read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_BEGIN} ... {README_END} markers to put the table between")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    note = f"<!-- rendered by: python -m dp_gym.suite render-readme {results_json} {readme} -->"
    body = markdown(record)
    spread = seed_spread_table(record)
    if spread:
        body += "\n\n" + spread
    atomic_write_bytes(Path(readme), f"{head}{README_BEGIN}\n{note}\n\n{body}\n\n{README_END}{tail}".encode())


def seed_spread_table(record: dict[str, Any]) -> str:
    """Success across training seeds, from the model cards of the suite's zoo entries (empty when
    no entry's card has a spread)."""
    from dp_gym.zoo import ZooEntryNotFoundError, get_entry

    rows = []
    for task, row in record["results"].items():
        for policy in row:
            try:
                spread = get_entry(f"{task}/{policy}").card.get("training_seed_spread")
            except (ZooEntryNotFoundError, ValueError):
                continue
            if spread:
                per = ", ".join(f"{v:.2f}" for v in spread["per_seed"].values())
                scores = [task_score(r) for r in spread.get("per_seed_results", {}).values()]
                # mean max reward is Push-T's coverage; robosuite's reward is 1 at success, so there it is the success rate
                label = (("coverage" if task.startswith("pusht") else "max reward") if scores and scores[0][0] == "mean_max_reward"
                         else (scores[0][0] if scores else ""))
                score = f"{sum(s for _, s in scores) / len(scores):.3f} ({label})" if scores else "–"
                rows.append(f"| {task} | {policy} | {len(spread['per_seed'])} | {spread['mean']:.3f} | {per} | {score} | {spread['seeds']} |")
    if not rows:
        return ""
    return "\n".join(["Across training seeds (float32 training checkpoints; the zoo ships the median seed on the selection "
                      "seeds):", "", "| task | policy | training seeds | mean success | success per seed | mean score | episode seeds |",
                      "|---|---|---|---|---|---|---|", *rows])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dp_gym.suite", description="Render suite results (run suites with python -m dp_gym.benchmark --suite NAME).")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render-readme", help="put a suite's results table into the README")
    r.add_argument("results_json", help="results.json written by python -m dp_gym.benchmark --suite")
    r.add_argument("readme", nargs="?", default="README.md", help="the Markdown file with the results markers")
    args = p.parse_args(argv)
    try:
        render_readme(args.results_json, args.readme)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
