"""Forward + backward of the small UNet's 1-D convolutions at training batch 64, one thread: PyTorch's
Conv1d (oneDNN) against the forms that could replace it in training. It answers where a training
step's time goes and whether another convolution form would speed it up.

* ``conv1d``: ``nn.Conv1d`` in float32, the trainer's path;
* ``gemm``: an explicit im2col + GEMM convolution (one GEMM forward, two backward, col2im by
  shifted adds), written as an autograd Function;
* ``conv2d_cl``: ``nn.Conv2d`` with a (1, k) kernel over channels-last (N, C, 1, T) tensors;
* ``conv1d_bf16``: ``nn.Conv1d`` with bfloat16 weights and inputs.

    python benchmarks/conv_layers.py
"""
import argparse

import torch
import torch.nn.functional as F

from dp_gym.perf import interleaved_ms

# (in channels, out channels, time steps): the shapes of the small UNet's kernel-5 convolutions at
# horizon 16 (levels of 64 / 128 / 256 channels at 16 / 8 / 4 steps; the up path reads skip + input)
LAYERS = [(64, 64, 16), (64, 128, 8), (128, 128, 8), (256, 64, 8), (128, 256, 4), (256, 256, 4), (512, 128, 4)]


class GemmConv1d(torch.autograd.Function):
    """A same-padded stride-1 1-D convolution as im2col + GEMM."""

    @staticmethod
    def forward(ctx, x, w, b):
        n, c, t = x.shape
        o, _, k = w.shape
        cols = F.pad(x, (k // 2, k // 2)).unfold(2, k, 1).permute(0, 2, 1, 3).reshape(n * t, c * k)
        wm = w.reshape(o, c * k)
        ctx.save_for_backward(cols, wm)
        ctx.shape = (n, c, t, o, k)
        return torch.addmm(b, cols, wm.t()).view(n, t, o).permute(0, 2, 1)

    @staticmethod
    def backward(ctx, gy):
        cols, wm = ctx.saved_tensors
        n, c, t, o, k = ctx.shape
        g = gy.permute(0, 2, 1).reshape(n * t, o)
        gcols = (g @ wm).view(n, t, c, k).permute(0, 2, 1, 3)
        gx = torch.zeros(n, c, t + k - 1, dtype=gy.dtype)
        for j in range(k):
            gx[:, :, j:j + t] += gcols[..., j]
        return gx[:, :, k // 2:k // 2 + t], (g.t() @ cols).view(o, c, k), g.sum(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="training batch")
    ap.add_argument("--kernel", type=int, default=5, help="kernel size")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"forward + backward, batch {args.batch}, kernel {args.kernel}, median ms, calls interleaved (ratio: conv1d time / variant time)")
    for cin, cout, t in LAYERS:
        conv = torch.nn.Conv1d(cin, cout, args.kernel, padding=args.kernel // 2)
        x = torch.randn(args.batch, cin, t, requires_grad=True)
        conv2d = torch.nn.Conv2d(cin, cout, (1, args.kernel), padding=(0, args.kernel // 2)).to(memory_format=torch.channels_last)
        x2d = torch.randn(args.batch, cin, 1, t).contiguous(memory_format=torch.channels_last).requires_grad_()
        conv_bf16 = torch.nn.Conv1d(cin, cout, args.kernel, padding=args.kernel // 2).to(torch.bfloat16)
        x_bf16 = torch.randn(args.batch, cin, t, dtype=torch.bfloat16, requires_grad=True)

        def run(y: torch.Tensor) -> None:
            y.backward(torch.ones_like(y))

        def forward_only() -> None:
            with torch.no_grad():
                conv(x)

        variants = {
            "forward": forward_only,
            "conv1d": lambda: run(conv(x)),
            "gemm": lambda: run(GemmConv1d.apply(x, conv.weight, conv.bias)),
            "conv2d_cl": lambda: run(conv2d(x2d)),
            "conv1d_bf16": lambda: run(conv_bf16(x_bf16)),
        }
        # the GEMM form computes the same gradients
        x.grad = None
        conv.zero_grad()
        run(conv(x))
        ref = (x.grad.clone(), conv.weight.grad.clone())
        x.grad = None
        conv.zero_grad()
        run(GemmConv1d.apply(x, conv.weight, conv.bias))
        assert torch.allclose(x.grad, ref[0], atol=1e-4) and torch.allclose(conv.weight.grad, ref[1], rtol=1e-4, atol=1e-2)
        ms = interleaved_ms(variants, torch.device("cpu"), args.repeats, warmup=3)
        fwd = ms.pop("forward")
        flop = 2 * args.batch * t * cout * cin * args.kernel
        print(f"{cin:4d} -> {cout:4d} ch, T={t:2d}: conv1d {ms['conv1d']:6.2f} (forward alone {fwd:5.2f}: "
              f"{flop / fwd / 1e6:4.0f} GFLOP/s; backward {2 * flop / (ms['conv1d'] - fwd) / 1e6:4.0f} GFLOP/s)  "
              + "  ".join(f"{k} {m:6.2f} ({ms['conv1d'] / m:.2f}x)" for k, m in ms.items() if k != "conv1d"))


if __name__ == "__main__":
    main()
