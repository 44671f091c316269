"""One UNet trunk pass (random weights, Push-T low-dim shapes) in ONNX Runtime (the CPU default of
``DiffusionAgent.predict``) against OpenVINO running the same ONNX models (the time-major export
the runtime uses, and a plain channels-first export), float32, one thread, calls interleaved. It
answers whether OpenVINO's CPU plugin, which fuses elementwise chains into its kernels, beats the
runtime at batch 10, where the runtime is bound by ~450 small elementwise nodes.

OpenVINO is not a dp_gym dependency: ``pip install openvino`` first.

    python benchmarks/trunk_openvino.py --batch 10 --size small
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dp_gym.perf import interleaved_ms, trunk_inputs
from dp_gym.policies.diffusion.accelerate import OnnxModel, OnnxTrunk, _TrunkModule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=10, help="samples per trunk pass")
    ap.add_argument("--size", default="small", help="UNet size (small | paper)")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per variant")
    args = ap.parse_args()
    import openvino as ov

    torch.set_num_threads(1)
    policy, x, c = trunk_inputs(args.size, args.batch)
    with torch.inference_mode():
        reference = policy.denoiser.denoise(x, c).numpy()
    shapes = {"x": tuple(x.shape[1:]), "c": tuple(c.shape[1:])}
    ort = OnnxTrunk(policy.denoiser, shapes["x"], shapes["c"])
    plain = OnnxModel.export(_TrunkModule(policy.denoiser), shapes)
    core = ov.Core()
    # f32 explicitly: on CPUs with bf16 units OpenVINO otherwise runs in bf16.
    config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    inputs = {"x": x.numpy(), "c": c.numpy()}

    def openvino(model: bytes):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trunk.onnx"
            path.write_bytes(model)
            net = core.read_model(path)
        net.reshape({k: [args.batch, *s] for k, s in shapes.items()})
        t0 = time.perf_counter()
        request = core.compile_model(net, "CPU", config).create_infer_request()
        print(f"openvino compile: {time.perf_counter() - t0:.2f} s")

        def run() -> np.ndarray:
            request.infer(inputs)
            return request.get_output_tensor(0).data
        return run

    fns = {"onnx runtime (time-major)": lambda: ort(x, c).numpy(), "openvino (time-major)": openvino(ort.model),
           "openvino (plain)": openvino(plain)}
    for k, fn in fns.items():
        print(f"max |difference| from eager, {k}: {np.abs(np.asarray(fn()) - reference).max():.1e}")
    medians = interleaved_ms(fns, torch.device("cpu"), repeats=args.repeats, warmup=3)
    for k, ms in medians.items():
        print(f"{k}: median {ms:.2f} ms per trunk pass")
    print(f"openvino {ov.__version__}, batch {args.batch}, UNet {args.size}")


if __name__ == "__main__":
    main()
