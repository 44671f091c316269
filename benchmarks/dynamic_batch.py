"""One UNet trunk pass (random weights, Push-T low-dim shapes) in OpenVINO compiled for a fixed
batch size against one session with a dynamic batch axis, plain and Winograd forms, batch 1 and
10, one thread, calls interleaved; and what each fixed-batch session costs to compile and hold
(resident memory). It is the measurement behind ``ONNX_DYNAMIC_BATCH_BYTES``: the model size
above which a model gets one dynamic-batch session instead of one per batch size.

    python benchmarks/dynamic_batch.py --sizes small,paper
"""
import argparse
import time

import numpy as np
import torch

from dp_gym.perf import interleaved_ms, trunk_inputs
from dp_gym.policies.diffusion.accelerate import OnnxTrunk, _OpenVinoSession


def resident_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,paper", help="comma-separated UNet sizes")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    alive = []  # every session stays in memory, so resident-memory growth is each one's own
    for size in args.sizes.split(","):
        policy, x, c = trunk_inputs(size, 1)
        for winograd in (False, True):
            form = "winograd" if winograd else "plain"
            model = OnnxTrunk(policy.denoiser, tuple(x.shape[1:]), tuple(c.shape[1:]), "openvino", winograd=winograd).model
            before = resident_mb()
            t0 = time.perf_counter()
            dynamic = _OpenVinoSession(model, 0, 1)
            alive.append(dynamic)
            print(f"{size} {form}: model {len(model) / 2**20:.0f} MB; dynamic session: compile {time.perf_counter() - t0:.2f} s, "
                  f"+{resident_mb() - before:.0f} MB resident")
            for batch in (1, 10):
                feeds = {"x": np.random.randn(batch, *x.shape[1:]).astype(np.float32), "c": np.repeat(c.numpy(), batch, 0)}
                before, t0 = resident_mb(), time.perf_counter()
                fixed = _OpenVinoSession(model, batch, 1)
                alive.append(fixed)
                compile_s, grown = time.perf_counter() - t0, resident_mb() - before
                ms = interleaved_ms({"fixed": lambda: fixed.run(None, feeds), "dynamic": lambda: dynamic.run(None, feeds)},
                                    torch.device("cpu"), repeats=args.repeats, warmup=2)
                print(f"  batch {batch:2d}: fixed {ms['fixed']:.2f} ms, dynamic {ms['dynamic']:.2f} ms per pass "
                      f"({ms['dynamic'] / ms['fixed']:.2f}x); the fixed session: compile {compile_s:.2f} s, +{grown:.0f} MB resident")


if __name__ == "__main__":
    main()
