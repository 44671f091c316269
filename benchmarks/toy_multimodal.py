"""Toy multimodality benchmark: does a policy keep two equally good action modes apart?

Same observation, demonstrations act at +0.7 or -0.7 (50/50). Trains the diffusion policy, chunked
BC and single-step IBC with the project's trainer, draws 500 actions from each, and reports the
fraction near each mode and near their mean (0), which no demonstration ever does.

    python benchmarks/toy_multimodal.py --out-dir benchmarks/results/toy_multimodal
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dp_gym.checkpoint import atomic_write_json, load_policy
from dp_gym.train import TrainConfig, train


@dataclass
class ToyConfig:
    out_dir: str = "benchmarks/results/toy_multimodal"
    runs_dir: str = "runs/toy_multimodal"  # checkpoints (kept out of the results folder)
    steps: int = 1500
    n_draws: int = 500
    seed: int = 0
    near: float = 0.25  # |a - mode| below this counts as "at the mode"


POLICIES = {
    # name: (policy type, n_action_steps, policy overrides, sampling kwargs)
    "diffusion": ("diffusion", 4, {"down_dims": [32, 64], "diffusion_step_embed_dim": 32, "horizon": 8, "n_obs_steps": 1}, {"sampler": "ddim", "num_inference_steps": 10}),
    "bc_chunked": ("bc", 4, {"hidden_dims": [64, 64], "n_obs_steps": 1}, {}),
    "ibc_argmax": ("ibc", 1, {"hidden_dims": [64, 64], "n_obs_steps": 1, "chunked": False, "n_counter_examples": 64}, {}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(ToyConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    cfg = ToyConfig(**vars(p.parse_args()))
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    draws: dict[str, np.ndarray] = {}
    for name, (kind, ta, overrides, sample_kw) in POLICIES.items():
        overrides = dict(overrides)
        to = overrides.pop("n_obs_steps")
        horizon = overrides.pop("horizon", to + ta - 1)
        ckpt = train(TrainConfig(task="toy_bimodal", policy=kind, steps=cfg.steps, batch_size=64, lr=1e-3, warmup_steps=50,
                                 n_obs_steps=to, n_action_steps=ta, horizon=horizon, val_ratio=0.0, seed=cfg.seed,
                                 checkpoint_every=cfg.steps, val_every=0, log_every=cfg.steps, num_threads=1,
                                 out_dir=str(Path(cfg.runs_dir) / name), policy_overrides=overrides))
        policy, _ = load_policy(ckpt)
        obs = {"obs": torch.zeros(cfg.n_draws, to, 2)}
        with torch.no_grad():
            chunk = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(cfg.seed), **sample_kw)
        draws[name] = chunk[:, 0, 0].numpy()  # first executed action of each draw
        if kind == "ibc":  # also draw from p ∝ exp(-E) instead of DFO's argmax
            with torch.no_grad():
                chunk = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(cfg.seed), select="sample")
            draws["ibc_sample"] = chunk[:, 0, 0].numpy()

    summary = {}
    for name, a in draws.items():
        summary[name] = {
            "frac_near_plus": float(np.mean(np.abs(a - 0.7) < cfg.near)),
            "frac_near_minus": float(np.mean(np.abs(a + 0.7) < cfg.near)),
            "frac_near_mean_0": float(np.mean(np.abs(a) < cfg.near)),
            "mean": float(a.mean()),
        }
        print(f"{name:12s} +0.7: {summary[name]['frac_near_plus']:.2f}  -0.7: {summary[name]['frac_near_minus']:.2f}  "
              f"~0: {summary[name]['frac_near_mean_0']:.2f}  mean {summary[name]['mean']:+.3f}")
    atomic_write_json(out / "results.json", {"config": dataclasses.asdict(cfg), "results": summary})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(draws), figsize=(3.2 * len(draws), 2.8), sharey=True)
    for ax, (name, a) in zip(axes, draws.items()):
        ax.hist(a, bins=np.linspace(-1.1, 1.1, 45), color="tab:blue")
        for m in (-0.7, 0.7):
            ax.axvline(m, color="tab:green", ls="--", lw=1)
        ax.axvline(0, color="tab:red", ls=":", lw=1)
        ax.set_title(name)
        ax.set_xlabel("action")
    fig.suptitle("toy bimodal task: demonstrations at ±0.7 (green), their mean 0 (red)")
    fig.tight_layout()
    fig.savefig(out / "actions_hist.png", dpi=110)
    print(f"wrote {out / 'results.json'} and {out / 'actions_hist.png'}")


if __name__ == "__main__":
    main()
