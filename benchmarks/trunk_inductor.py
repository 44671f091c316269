"""One UNet trunk pass (random weights, Push-T low-dim shapes) in ONNX Runtime (the fallback of
``DiffusionAgent.predict``'s CPU default, OpenVINO) against the same time-major module compiled by inductor and run eagerly,
calls interleaved, one thread. It answers whether inductor's fused elementwise kernels beat the
runtime at batch 10, where the runtime is bound by ~450 small elementwise nodes.

    python benchmarks/trunk_inductor.py --batch 10 --size small [--freeze]
"""
import argparse
import time

import torch

from dp_gym.perf import interleaved_ms, trunk_inputs
from dp_gym.policies.diffusion.accelerate import OnnxTrunk, _export_form, _TrunkModule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=10, help="samples per trunk pass")
    ap.add_argument("--size", default="small", help="UNet size (small | paper)")
    ap.add_argument("--freeze", action="store_true", help="inductor freezing (weights as constants)")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.freeze:
        torch._inductor.config.freezing = True
    policy, x, c = trunk_inputs(args.size, args.batch)
    ort = OnnxTrunk(policy.denoiser, tuple(x.shape[1:]), tuple(c.shape[1:]))
    module = _TrunkModule(_export_form(policy.denoiser, tuple(x.shape[1:]))).eval()
    compiled = torch.compile(module, dynamic=False)
    with torch.inference_mode():
        t0 = time.perf_counter()
        y_c = compiled(x, c)
        print(f"inductor compile: {time.perf_counter() - t0:.1f} s")
        y_e = module(x, c)
        print(f"max |difference| from eager: inductor {(y_c - y_e).abs().max().item():.1e}, "
              f"onnx {(ort(x, c) - y_e).abs().max().item():.1e}")
        fns = {"onnx": lambda: ort(x, c), "inductor": lambda: compiled(x, c), "eager (time-major)": lambda: module(x, c)}
        medians = interleaved_ms(fns, torch.device("cpu"), repeats=args.repeats, warmup=3)
    for k, ms in medians.items():
        print(f"{k}: median {ms:.2f} ms per trunk pass")


if __name__ == "__main__":
    main()
