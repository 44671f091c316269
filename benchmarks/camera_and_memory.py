"""Two figures the perf README explains the image and paper-size rows with, one thread:

* one camera network (ResNet-18 GroupNorm + spatial softmax, 84x84 crops) over ``--frames``
  frames in OpenVINO (the CPU default), ONNX Runtime and eager PyTorch, and eager PyTorch's
  ResNet-18 trunk with and without its GroupNorms (what the normalisation costs);
* how fast one core reads memory (a numpy sum over a 256 MB float32 array), against which the
  paper UNet's 244 MB of trunk weights per pass are compared.

    python benchmarks/camera_and_memory.py --frames 20
"""
import argparse
import copy

import numpy as np
import torch
from torch import nn

from dp_gym.evaluation import timed_s
from dp_gym.perf import build_policy, interleaved_ms
from dp_gym.policies.diffusion.accelerate import OnnxModel, _CameraFeatures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20, help="frames per camera pass (batch 10 x To 2)")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cam = next(iter(build_policy("image", "small", torch.device("cpu")).eval().image_encoder.cameras.values()))
    x = torch.randn(args.frames, cam.image_shape[2], *cam.crop_shape)
    shapes = {"x": tuple(x.shape[1:])}
    runtimes = {r: OnnxModel(_CameraFeatures(cam), shapes, r) for r in ("openvino", "onnxruntime")}
    no_norm = copy.deepcopy(cam.trunk)
    for module in list(no_norm.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, nn.Identity())
    with torch.inference_mode():
        fns = {**{f"camera network, {r}": (lambda m=m: m(x)) for r, m in runtimes.items()},
               "camera network, eager": lambda: cam.features(x), "ResNet-18 trunk, eager": lambda: cam.trunk(x),
               "ResNet-18 trunk without GroupNorm, eager": lambda: no_norm(x)}
        medians = interleaved_ms(fns, torch.device("cpu"), repeats=args.repeats, warmup=1)
    for k, ms in medians.items():
        print(f"{k}: median {ms:.1f} ms for {args.frames} frames")
    a = np.ones(64_000_000, np.float32)
    best = min(timed_s(a.sum, torch.device("cpu")) for _ in range(5))
    print(f"memory read, one core: {a.nbytes / best / 1e9:.1f} GB/s (numpy sum over {a.nbytes / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
