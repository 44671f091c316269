"""One UNet trunk pass (random weights, Push-T low-dim shapes) in OpenVINO (the CPU default of
``DiffusionAgent.predict``) against ONNX Runtime (its fallback) on the same time-major export, and
against OpenVINO on a plain channels-first export and on the time-major export with its weights
stored in float16 (``compress_to_fp16``: half the bytes to read, compute still float32); one
thread, calls interleaved. It answers which export and which runtime to run, at batch 1 and at
batch 10, where ONNX Runtime is bound by ~450 small elementwise nodes that OpenVINO fuses into its
kernels.

    python benchmarks/trunk_openvino.py --batch 10 --size small
"""
import argparse
import io
import tempfile
import time

import numpy as np
import torch

from dp_gym.perf import interleaved_ms, trunk_inputs
from dp_gym.policies.diffusion.accelerate import OnnxModel, OnnxTrunk, _OpenVinoSession, _TrunkModule


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
    inputs = {"x": x.numpy(), "c": c.numpy()}

    def openvino(model):  # ONNX bytes, or a model OpenVINO has read
        t0 = time.perf_counter()
        session = _OpenVinoSession(model, args.batch, 1)  # what the agent's default path compiles
        print(f"openvino compile: {time.perf_counter() - t0:.2f} s")
        return lambda: session.run(None, inputs)[0]

    def float16_weights(model: bytes):
        """``openvino`` on the same model with its weights stored in float16 (an OpenVINO IR,
        compiled before its files go)."""
        with tempfile.TemporaryDirectory() as tmp:
            ov.save_model(ov.Core().read_model(io.BytesIO(model)), f"{tmp}/m.xml", compress_to_fp16=True)
            return openvino(ov.Core().read_model(f"{tmp}/m.xml"))

    fns = {"onnx runtime (time-major)": lambda: ort(x, c).numpy(), "openvino (time-major)": openvino(ort.model),
           "openvino (plain)": openvino(plain), "openvino (time-major, float16 weights)": float16_weights(ort.model)}
    for k, fn in fns.items():
        print(f"max |difference| from eager, {k}: {np.abs(np.asarray(fn()) - reference).max():.1e}")
    medians = interleaved_ms(fns, torch.device("cpu"), repeats=args.repeats, warmup=3)
    for k, ms in medians.items():
        print(f"{k}: median {ms:.2f} ms per trunk pass")
    print(f"openvino {ov.__version__}, batch {args.batch}, UNet {args.size}")


if __name__ == "__main__":
    main()
