"""One UNet trunk pass (random weights, Push-T low-dim shapes) in its plain time-major form
(each convolution a gather + one GEMM) against its Winograd form (the 'same' convolutions by
F(4, k), :class:`~dp_gym.policies.diffusion.accelerate._WinogradConv`), in OpenVINO and in ONNX
Runtime, one thread, calls interleaved, over batch sizes. It is the measurement behind
``WINOGRAD_MIN_BATCH``: the batch size from which the sampling path runs the Winograd form.
In OpenVINO it also times the Winograd form with F(4, k) tiles at every level ("tiles only"),
against which taking the deepest level's 4-position axis as one swapped tile is measured.

    python benchmarks/trunk_winograd.py --size small --batches 1,2,4,6,10
"""
import argparse

import numpy as np
import torch

from dp_gym.perf import interleaved_ms, trunk_inputs
from dp_gym.policies.diffusion import accelerate
from dp_gym.policies.diffusion.accelerate import OnnxModel, OnnxTrunk, _WinogradConv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", help="UNet size (small | paper)")
    ap.add_argument("--batches", default="1,2,4,6,10", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    accelerate.ONNX_SESSIONS_BYTES = 1 << 34  # keep all four sessions compiled (the paper UNet's would be evicted)
    print(f"UNet {args.size}; ms per trunk pass (median), plain / winograd, and the ratio plain / winograd")
    for batch in (int(b) for b in args.batches.split(",")):
        policy, x, c = trunk_inputs(args.size, batch)
        with torch.inference_mode():
            reference = policy.denoiser.denoise(x, c)
        shapes = (tuple(x.shape[1:]), tuple(c.shape[1:]))
        fns, diffs = {}, {}
        for runtime, winograd, whole_axis_max in (("openvino", False, 4), ("openvino", True, 4), ("openvino", True, 0),
                                                  ("onnxruntime", False, 4), ("onnxruntime", True, 4)):
            _WinogradConv.whole_axis_max = whole_axis_max
            trunk = OnnxTrunk(policy.denoiser, *shapes, runtime=runtime, winograd=winograd)
            key = runtime, winograd, whole_axis_max
            diffs[key] = float((trunk(x, c) - reference).abs().max())
            fns[key] = lambda trunk=trunk: trunk(x, c)
        _WinogradConv.whole_axis_max = 4
        ms = interleaved_ms(fns, torch.device("cpu"), repeats=args.repeats, warmup=3)
        for runtime in ("openvino", "onnxruntime"):
            plain, wino = ms[runtime, False, 4], ms[runtime, True, 4]
            print(f"batch {batch:2d} {runtime:11s}: {plain:7.2f} / {wino:7.2f} ms  {plain / wino:.2f}x  "
                  f"(max |difference| from eager: {diffs[runtime, False, 4]:.1e} / {diffs[runtime, True, 4]:.1e})")
        del fns
        OnnxModel._sessions.clear()  # five paper-UNet sessions per batch size would fill 24 GB over the sizes
        tiled = ms["openvino", True, 0]
        print(f"batch {batch:2d} openvino, Winograd tiles only: {tiled:7.2f} ms; the whole-axis tile at the deepest level "
              f"{tiled / ms['openvino', True, 4]:.3f}x faster (max |difference| from eager: {diffs['openvino', True, 0]:.1e})")


if __name__ == "__main__":
    main()
