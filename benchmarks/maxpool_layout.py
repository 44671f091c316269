"""The ResNet stem's 3x3 / 2 max pool on CPU, one thread: PyTorch's channels-first kernel against
dp_gym's ``MaxPool2d`` (channels-last pool, layout copies included), forward and forward +
backward, at the camera network's inference (20 frames: 10 envs x 2 observation steps) and
training (64 frames: batch 32 x 2) sizes of an 84x84 crop. (An image-policy training step is
timed by ``python -m dp_gym.perf --kinds image``.)

    python benchmarks/maxpool_layout.py
"""
import argparse

import torch
from torch import nn

from dp_gym.perf import interleaved_ms
from dp_gym.policies.vision import MaxPool2d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    print("median ms, calls interleaved (ratio: PyTorch's time / dp_gym's)")
    for frames in (20, 64):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(frames, 64, 42, 42).to(dtype)
            xg = x.clone().requires_grad_()
            ref, ours = nn.MaxPool2d(3, 2, 1), MaxPool2d(3, 2, 1)
            assert torch.equal(ref(x), ours(x))
            ms = interleaved_ms({
                "pytorch": lambda: ref(x), "dp_gym": lambda: ours(x),
                "pytorch_train": lambda: ref(xg).backward(torch.ones(frames, 64, 21, 21, dtype=dtype)),
                "dp_gym_train": lambda: ours(xg).backward(torch.ones(frames, 64, 21, 21, dtype=dtype)),
            }, cpu, args.repeats, 2)
            print(f"  ({frames}, 64, 42, 42) {str(dtype).replace('torch.', ''):8s}: forward pytorch {ms['pytorch']:6.2f}  "
                  f"dp_gym {ms['dp_gym']:6.2f} ({ms['pytorch'] / ms['dp_gym']:.2f}x); forward + backward pytorch "
                  f"{ms['pytorch_train']:6.2f}  dp_gym {ms['dp_gym_train']:6.2f} ({ms['pytorch_train'] / ms['dp_gym_train']:.2f}x)")


if __name__ == "__main__":
    main()
