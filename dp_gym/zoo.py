"""The model zoo: trained policies shipped with dp_gym, loadable by name.

An entry is a folder ``<zoo>/<task>/<policy>/`` holding

* ``model.safetensors`` + ``config.json``: an ordinary dp_gym checkpoint, weights stored in float16
  (loading gives float32; normaliser statistics stay float32);
* ``card.json``: the machine-readable model card (task, data checksum, training command and seeds,
  the benchmark arguments the scores were measured with, scores per seed range with intervals);
* ``README.md``: the same card for people, rendered from ``card.json``;
* ``golden.safetensors``: a few fixed observations, the sampling noise and the actions the entry
  gave for them when it was shipped (``tests/test_zoo.py`` checks every entry against them).

The zoo lives in ``benchmarks/zoo`` of the dp_gym checkout (``$DP_GYM_ZOO_DIR`` overrides it).

    >>> from dp_gym import PolicyAgent
    >>> agent = PolicyAgent.from_pretrained("zoo:pusht_keypoints/diffusion")

Command line::

    python -m dp_gym.zoo list                       # every entry with its held-out score
    python -m dp_gym.zoo export RUN_DIR --task kitchen_complete_abs --policy diffusion ...
    python -m dp_gym.zoo verify                     # golden actions of every entry
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ZOO_PREFIX = "zoo:"
ZOO_DIR_ENV = "DP_GYM_ZOO_DIR"
CARD_FILE = "card.json"
GOLDEN_FILE = "golden.safetensors"
# Golden actions must match to this fraction of each action dimension's range in the training
# data (the normaliser's span): far below anything that changes a rollout, far above float
# reordering noise of an equivalent computation (fused kernels, an inference runtime).
GOLDEN_TOLERANCE = 1e-3


class ZooEntryNotFoundError(FileNotFoundError):
    """A ``zoo:<task>/<policy>`` name that is not in the zoo; the message lists what is."""


def zoo_root() -> Path:
    """``$DP_GYM_ZOO_DIR``, else ``benchmarks/zoo`` of the checkout this package runs from."""
    env = os.environ.get(ZOO_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "benchmarks" / "zoo"


@dataclass(frozen=True)
class ZooEntry:
    task: str
    policy: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.task}/{self.policy}"

    @property
    def card(self) -> dict[str, Any]:
        return json.loads((self.path / CARD_FILE).read_text())


def list_entries(root: str | Path | None = None) -> list[ZooEntry]:
    """Every ``<task>/<policy>`` folder under the zoo holding a model and a card, sorted."""
    root = Path(root) if root is not None else zoo_root()
    if not root.is_dir():
        return []
    return [ZooEntry(d.parent.name, d.name, d) for d in sorted(root.glob("*/*"))
            if (d / "model.safetensors").is_file() and (d / CARD_FILE).is_file()]


def get_entry(name: str, root: str | Path | None = None) -> ZooEntry:
    """The entry ``"<task>/<policy>"`` (a leading ``zoo:`` is accepted)."""
    name = name[len(ZOO_PREFIX):] if name.startswith(ZOO_PREFIX) else name
    task, sep, policy = name.partition("/")
    if not sep or not task or not policy or "/" in policy:
        raise ValueError(f"zoo names have the form 'zoo:<task>/<policy>', got {name!r}")
    for entry in list_entries(root):
        if entry.task == task and entry.policy == policy:
            return entry
    available = ", ".join(e.name for e in list_entries(root)) or "none"
    raise ZooEntryNotFoundError(f"no zoo entry {name!r} under {Path(root) if root else zoo_root()}; available: {available}")


def resolve(spec: str | os.PathLike) -> Path:
    """A checkpoint location: ``zoo:<task>/<policy>`` becomes the entry's folder; a path stays."""
    s = os.fspath(spec)
    return get_entry(s).path if s.startswith(ZOO_PREFIX) else Path(s)


# --- export ------------------------------------------------------------------------------------
WEIGHT_DTYPES = ("float16", "float32")


def half_precision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 weights as float16, except the normalisers' statistics (their min / max set the
    action scale, and they are tiny)."""
    return {k: v.half() if v.dtype == torch.float32 and "normalizer" not in k else v for k, v in state.items()}


def golden_observations(task_name: str, policy: torch.nn.Module, data_dir: str | None, n: int = 4) -> dict[str, torch.Tensor]:
    """``n`` history windows (To frames each) from the task's demonstrations, spread over the
    dataset: the observations the golden actions are computed for."""
    from dp_gym.tasks import get_task

    episodes = get_task(task_name).load_dataset(data_dir)
    to = policy.config.n_obs_steps
    starts, ends = episodes.episode_starts, episodes.episode_ends
    picks = np.linspace(0, episodes.n_episodes - 1, n).round().astype(int)
    frames = [np.clip(np.arange(int((s + e) // 2) - to + 1, int((s + e) // 2) + 1), s, e - 1)
              for s, e in zip(starts[picks], ends[picks])]
    return {k: torch.as_tensor(np.stack([episodes.arrays[k][f] for f in frames])) for k in policy.config.obs_shapes}


def golden_actions(policy: torch.nn.Module, obs: dict[str, torch.Tensor], noise: torch.Tensor | None,
                   default_path: bool = False) -> torch.Tensor:
    """The policy's chunk for ``obs`` (history windows) with the given sampling noise: plain eager
    PyTorch, or with ``default_path`` the way :class:`~dp_gym.agent.PolicyAgent` samples by
    default (an ``accelerable`` policy on CPU: the ONNX Runtime trunk)."""
    from dp_gym.agent import PolicyAgent

    kw: dict[str, Any] = {} if noise is None else {"noise": noise}
    if default_path and policy.accelerable:
        kw["accelerator"] = PolicyAgent(policy)._sampling_accelerator()
    with torch.inference_mode():
        return policy.predict_chunk(obs, **kw).float()


def golden_noise(policy: torch.nn.Module, n: int, seed: int = 0) -> torch.Tensor | None:
    if not policy.stochastic:
        return None
    return torch.randn((n, *policy.noise_shape()), generator=torch.Generator().manual_seed(seed))


def check_golden(entry: ZooEntry) -> float:
    """Largest deviation of the entry's actions from its stored golden actions, as a fraction of
    the action range; raises if it exceeds :data:`GOLDEN_TOLERANCE`."""
    from dp_gym.checkpoint import load_policy, load_tensors

    policy, _ = load_policy(entry.path)
    ref, _ = load_tensors(entry.path / GOLDEN_FILE)
    obs = {k[4:]: v for k, v in ref.items() if k.startswith("obs.")}
    span = (policy.action_normalizer.data_max - policy.action_normalizer.data_min).clamp_min(1e-6)
    # both ways of sampling must give the shipped actions: plain eager and the agent's default
    dev = max(float(((golden_actions(policy, obs, ref.get("noise"), default_path=d) - ref["action"]).abs() / span).max())
              for d in (False, True))
    if not dev <= GOLDEN_TOLERANCE:
        raise AssertionError(f"zoo entry {entry.name}: actions moved by {dev:.2e} of the action range "
                             f"from the shipped golden actions (tolerance {GOLDEN_TOLERANCE:g})")
    return dev


def export(checkpoint: str | Path, task: str, policy_name: str, out_root: str | Path | None = None,
           sample_overrides: dict[str, Any] | None = None, card: dict[str, Any] | None = None,
           data_dir: str | None = None, weights_dtype: str = "float16") -> ZooEntry:
    """Write a zoo entry from a training checkpoint: weights in ``weights_dtype`` (float16 unless
    that moves the entry's held-out score out of the float32 checkpoint's interval), ``config.json`` (with
    ``sample_overrides`` such as ``{"sampler": "ddim", "num_inference_steps": 10}`` applied to the
    policy config), golden actions, and ``card.json`` / ``README.md`` from ``card``."""
    import dataclasses

    from dp_gym.checkpoint import atomic_save_tensors, load_policy, save_policy

    policy, meta = load_policy(checkpoint)
    if sample_overrides:
        policy.config = dataclasses.replace(policy.config, **sample_overrides)
    dest = Path(out_root if out_root is not None else zoo_root()) / task / policy_name
    extra = {k: meta[k] for k in ("task", "train_step", "train_config") if k in meta}
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {WEIGHT_DTYPES}, got {weights_dtype!r}")
    state = policy.state_dict()
    save_policy(policy, dest, extra, state_dict=half_precision_state(state) if weights_dtype == "float16" else state)
    shipped, _ = load_policy(dest)  # golden actions of what users load: the stored weights
    obs = golden_observations(task, shipped, data_dir)
    noise = golden_noise(shipped, len(next(iter(obs.values()))))
    golden = {**{f"obs.{k}": v for k, v in obs.items()}, "action": golden_actions(shipped, obs, noise)}
    if noise is not None:
        golden["noise"] = noise
    atomic_save_tensors(dest / GOLDEN_FILE, golden, {"tolerance": GOLDEN_TOLERANCE})
    entry = ZooEntry(task, policy_name, dest)
    write_card(entry, {"task": task, "policy": policy_name, **(card or {}), "weights_dtype": weights_dtype})
    return entry


# --- cards -------------------------------------------------------------------------------------
def write_card(entry: ZooEntry, card: dict[str, Any]) -> None:
    """Write ``card.json`` and render ``README.md`` from it."""
    from dp_gym.checkpoint import atomic_write_bytes, atomic_write_json

    atomic_write_json(entry.path / CARD_FILE, card)
    atomic_write_bytes(entry.path / "README.md", render_card(card).encode())


def _score_cells(r: dict[str, Any]) -> str:
    from dp_gym.benchmark import p_k_columns

    pk = p_k_columns({"": r})
    score = ", ".join(f"{k} {r[k]:.2f}" for k in pk) if pk else f"{r['mean_max_reward']:.3f}"
    lo, hi = r["success_ci95"]
    return f"{score} | {r['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def render_card(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    t = card.get("training", {})
    lines = [f"# {card['task']} / {card['policy']}", "", card.get("summary", ""), "",
             "## Use", "", "```python", "from dp_gym import PolicyAgent",
             f'agent = PolicyAgent.from_pretrained("zoo:{card["task"]}/{card["policy"]}")', "```", "",
             "```bash",
             f"python -m dp_gym.benchmark --task {card['task']} --policy {card['policy']}=zoo:{card['task']}/{card['policy']} "
             + " ".join(card.get("benchmark_args", [])) + " --seeds 100000:100050", "```", ""]
    if card.get("data"):
        d = card["data"]
        lines += ["## Data", "", f"`{d.get('file')}` (SHA-256 `{d.get('sha256', '?')}`): {d.get('description', '')}", ""]
    if t:
        wall = t.get("wall_minutes", {})
        wall_txt = ", ".join(f"seed {k}: {v} min" for k, v in wall.items()) if isinstance(wall, dict) else f"{wall} min"
        lines += ["## Training", "", "```bash", t.get("command", ""), "```", "",
                  f"Training seeds {', '.join(map(str, t.get('seeds', [])))}, {t.get('steps')} steps each on "
                  f"{t.get('machine', 'a 2-core CPU')}; wall time {wall_txt}. The shipped checkpoint is training seed "
                  f"{t.get('shipped_seed')}: {t.get('shipped_because', 'the median of the training seeds')}.", ""]
    if card.get("gpu_recipe"):
        g = card["gpu_recipe"]
        lines += ["## GPU recipe", "", f"{g.get('note', '')}:", "", "```bash", g.get("command", ""), "```", ""]
    if card.get("results"):
        lines += [f"## Results (the shipped {card.get('weights_dtype', 'float16')} weights)", "", "| split | seeds | episodes | score | success (95% Wilson) |",
                  "|---|---|---|---|---|"]
        for r in card["results"]:
            lines.append(f"| {r.get('split', '')} | {r['seeds']} | {r['episodes']} | {_score_cells(r)} |")
        lines.append("")
    if card.get("training_seed_spread"):
        s = card["training_seed_spread"]
        lines += ["## Across training seeds (float32 training checkpoints)", "", f"Seeds {s['seeds']}, one episode each.", "",
                  "| training seed | score | success (95% Wilson) |", "|---|---|---|"]
        for seed, r in s.get("per_seed_results", {}).items():
            lines.append(f"| {seed} | {_score_cells(r)} |")
        lines += ["", f"Success rate: mean {s['mean']:.3f}, range {s['min']:.2f}–{s['max']:.2f}.", ""]
    if card.get("failure_modes"):
        lines += ["## Known failure modes", "", *[f"- {m}" for m in card["failure_modes"]], ""]
    if card.get("versions"):
        lines += [f"Saved with dp_gym {card['versions'].get('dp_gym')} and torch {card['versions'].get('torch')}.", ""]
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> None:
    entries = list_entries(args.zoo_dir)
    if not entries:
        print(f"no zoo entries under {args.zoo_dir or zoo_root()}")
        return
    print(f"{'entry':40s} {'held-out seeds':>16s}  score")
    for e in entries:
        res = [r for r in e.card.get("results", []) if r.get("split") == "held_out"]
        txt = _score_cells(res[0]).replace(" | ", ", success ") if res else "not scored"
        print(f"zoo:{e.name:36s} {res[0]['seeds'] if res else '':>16s}  {txt}")


def _cmd_verify(args: argparse.Namespace) -> None:
    for e in list_entries(args.zoo_dir):
        print(f"zoo:{e.name}: golden actions within {check_golden(e):.1e} of the action range")


def _cmd_export(args: argparse.Namespace) -> None:
    card = json.loads(Path(args.card).read_text()) if args.card else {}
    entry = export(args.checkpoint, args.task, args.policy, args.zoo_dir, json.loads(args.sample_overrides), card, args.data_dir,
                   args.weights_dtype)
    print(f"wrote {entry.path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dp_gym.zoo", description="List, verify and export model-zoo entries.")
    p.add_argument("--zoo-dir", default=None, help=f"zoo folder (default: ${ZOO_DIR_ENV}, else benchmarks/zoo of the checkout)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every entry with its held-out score").set_defaults(fn=_cmd_list)
    sub.add_parser("verify", help="check every entry's golden actions").set_defaults(fn=_cmd_verify)
    ex = sub.add_parser("export", help="make an entry from a training checkpoint")
    ex.add_argument("checkpoint", help="checkpoint folder (e.g. runs/x/checkpoints/latest)")
    ex.add_argument("--task", required=True, help="the task it was trained on")
    ex.add_argument("--policy", required=True, help="entry name under the task: diffusion | bc | ibc")
    ex.add_argument("--sample-overrides", default="{}", help='JSON policy-config overrides, e.g. \'{"sampler": "ddim", "num_inference_steps": 10}\'')
    ex.add_argument("--card", default=None, help="JSON file with the card's fields")
    ex.add_argument("--data-dir", default=None, help="data folder (default: $DP_GYM_DATA_DIR) for the golden observations")
    ex.add_argument("--weights-dtype", default="float16", choices=WEIGHT_DTYPES,
                    help="stored weights (default: float16; float32 where half precision moves the score)")
    ex.set_defaults(fn=_cmd_export)
    args = p.parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, AssertionError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
