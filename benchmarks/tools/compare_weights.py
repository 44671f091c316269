"""Compare a retrained checkpoint's weights with a zoo entry's: do the card's training command and
data reproduce the shipped model? Each retrained tensor is cast to the shipped tensor's dtype
(zoo weights are float16 where the card says so) before comparing.

    python benchmarks/tools/compare_weights.py benchmarks/zoo/lift_state/diffusion/model.safetensors \
        runs/repro/lift_state_diffusion_seed1/checkpoints/latest/model.safetensors
"""

from __future__ import annotations

import argparse

from safetensors.torch import load_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shipped", help="the entry's model.safetensors")
    ap.add_argument("retrained", help="the retrained checkpoint's model.safetensors")
    args = ap.parse_args()
    shipped, retrained = load_file(args.shipped), load_file(args.retrained)
    if set(shipped) != set(retrained):
        raise SystemExit(f"different tensors: only in shipped {sorted(set(shipped) - set(retrained))[:5]}, "
                         f"only in retrained {sorted(set(retrained) - set(shipped))[:5]}")
    same, worst = 0, 0.0
    for name, ref in shipped.items():
        if retrained[name].shape != ref.shape:
            raise SystemExit(f"{name}: shape {tuple(retrained[name].shape)} against the shipped {tuple(ref.shape)}")
        new = retrained[name].to(ref.dtype)
        same += bool((new == ref).all())
        worst = max(worst, float((new.float() - ref.float()).abs().max()))
    print(f"{same}/{len(shipped)} tensors identical after casting to the shipped dtype; largest |difference| {worst:.3g}")


if __name__ == "__main__":
    main()
