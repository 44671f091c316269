"""Forward + backward of the small UNet's layers at training batch 64, one thread: PyTorch's own
kernels against :mod:`dp_gym.policies.diffusion.train_kernels`, the CPU training forms dp_gym uses.

* ``conv``: a kernel-5 same-padded ``Conv1d`` under bfloat16 autocast (float32 weights, as the
  trainer's ``--mixed-precision bf16``), at each of the UNet's (channels, steps) shapes; the
  weight-gradient-as-forward-convolution form is the one used at 4 steps, and is timed at 8 and
  16 to show why it is not used there;
* ``conv``, float32: the same shapes by Winograd's minimal filtering (the function
  ``_WholeAxisConv1dFunction``): one swapped tile over the whole axis at 4 steps, where it is
  used, and F(4, 5) tiles at 8 and 16 steps, timed to show why it is not used there (the whole
  training step measured no faster with it);
* ``group norm``: GroupNorm(8) as a layer norm per group plus the channel affine (the form used
  at 4 steps) at each level's shape, float32;
* ``mish``: Mish on a (64, 256, 4) activation, float32 and bfloat16.

    python benchmarks/train_kernels.py
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from dp_gym.perf import interleaved_ms
from dp_gym.policies.diffusion.train_kernels import Conv1d, GroupNorm, Mish, _WholeAxisConv1dFunction
from dp_gym.policies.diffusion.winograd import winograd_tiling, winograd_whole

# (in channels, out channels, time steps, uses per training step) of the small UNet's kernel-5
# convolutions at horizon 16 (levels of 64 / 128 / 256 channels at 16 / 8 / 4 steps)
LAYERS = [(2, 64, 16, 1), (64, 64, 16, 4), (64, 128, 8, 1), (128, 128, 8, 3), (256, 64, 8, 1), (64, 64, 8, 3),
          (128, 256, 4, 1), (256, 256, 4, 7), (512, 128, 4, 1), (128, 128, 4, 3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="training batch")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    print(f"forward + backward, batch {args.batch}, median ms, calls interleaved (ratio: PyTorch's time / dp_gym's)")
    def bf16_weight_grad(cin: int, cout: int, t: int):
        ours = Conv1d(cin, cout, 5, padding=2)
        ours.SHORT_SEQUENCE = t  # time the form at every length
        ref = nn.Conv1d(cin, cout, 5, padding=2)
        x = torch.randn(args.batch, cin, t, requires_grad=True)
        grad = torch.randn(args.batch, cout, t, dtype=torch.bfloat16)

        def run(conv: nn.Module):
            def call() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = conv(x)
                y.backward(grad)
            return call
        return run(ref), run(ours)

    def fp32_winograd(cin: int, cout: int, t: int):
        ref = nn.Conv1d(cin, cout, 5, padding=2)
        mats = [m.float().contiguous() for m in (winograd_whole(5, t) if t <= 4 else winograd_tiling(4, 5, t))]
        x = torch.randn(args.batch, cin, t, requires_grad=True)
        grad = torch.randn(args.batch, cout, t)
        return (lambda: ref(x).backward(grad),
                lambda: _WholeAxisConv1dFunction.apply(x, ref.weight, ref.bias, *mats).backward(grad))

    for title, name, make in (("Conv1d, kernel 5, bfloat16 autocast:", "weight-grad-as-conv", bf16_weight_grad),
                              ("Conv1d, kernel 5, float32: Winograd (whole axis at T=4, F(4, 5) tiles at T=8, 16):", "winograd",
                               fp32_winograd)):
        print(title)
        total = {"pytorch": 0.0, "dp_gym": 0.0}
        for cin, cout, t, uses in LAYERS:
            pytorch_call, dp_gym_call = make(cin, cout, t)
            ms = interleaved_ms({"pytorch": pytorch_call, "dp_gym": dp_gym_call}, cpu, args.repeats, 3)
            used = t <= Conv1d.SHORT_SEQUENCE
            for k in total:
                total[k] += uses * ms[k if used else "pytorch"]
            print(f"  {cin:4d} -> {cout:4d} ch, T={t:2d}: pytorch {ms['pytorch']:6.3f}  {name} {ms['dp_gym']:6.3f} "
                  f"({ms['pytorch'] / ms['dp_gym']:.2f}x; {'used' if used else 'not used'}, {uses} per step)")
        print(f"  per training step, the {sum(u for *_, u in LAYERS)} kernel-5 convolutions: pytorch {total['pytorch']:.1f} ms, "
              f"dp_gym {total['dp_gym']:.1f} ms ({total['pytorch'] / total['dp_gym']:.2f}x)")
    print("GroupNorm(8), float32:")
    for c, t in ((64, 16), (128, 8), (128, 4), (256, 4)):
        ours, ref = GroupNorm(8, c), nn.GroupNorm(8, c)
        ours.SHORT_SEQUENCE = t  # time the form at every length
        x = torch.randn(args.batch, c, t, requires_grad=True)
        grad = torch.randn(args.batch, c, t)
        ms = interleaved_ms({"pytorch": lambda: ref(x).backward(grad), "dp_gym": lambda: ours(x).backward(grad)},
                            cpu, args.repeats * 3, 5)
        print(f"  {c:4d} ch, T={t:2d}: pytorch {ms['pytorch']:.3f}  layer-norm form {ms['dp_gym']:.3f} "
              f"({ms['pytorch'] / ms['dp_gym']:.2f}x; {'used' if t <= GroupNorm.SHORT_SEQUENCE else 'not used'})")
    print("Mish, (64, 256, 4):")
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(args.batch, 256, 4) * 3).to(dtype).requires_grad_()
        grad = torch.randn(args.batch, 256, 4).to(dtype)
        ours = Mish()

        def pytorch_mish() -> None:
            F.mish(x).backward(grad)

        def dp_gym_mish() -> None:
            ours(x).backward(grad)

        ms = interleaved_ms({"pytorch": pytorch_mish, "dp_gym": dp_gym_mish}, cpu, args.repeats * 3, 5)
        print(f"  {str(dtype).replace('torch.', ''):8s}: pytorch {ms['pytorch']:.3f}  dp_gym {ms['dp_gym']:.3f} "
              f"({ms['pytorch'] / ms['dp_gym']:.2f}x)")


if __name__ == "__main__":
    main()
