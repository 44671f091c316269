"""The small UNet's 5-tap convolutions at training batch 64, forward + backward: PyTorch's Conv1d
(oneDNN) against the same layer by Winograd F(4, 5) written as PyTorch matrix products (the form
that speeds up sampling in OpenVINO), one thread, calls interleaved. Measured, not built: training
keeps Conv1d.

    python benchmarks/train_winograd.py
"""
import torch

from dp_gym.perf import interleaved_ms
from dp_gym.policies.diffusion.accelerate import _winograd_tiling

torch.set_num_threads(1)


class WinoFn(torch.nn.Module):
    """Conv1d (stride 1, 'same' padding) on (B, C, T) by F(m, k), weights transformed in the graph
    so that their gradient flows."""

    def __init__(self, t, k, m=4):
        super().__init__()
        transform_in, transform_out, g = _winograd_tiling(m, k, t)
        self.Bi, self.Ao, self.G = transform_in.float(), transform_out.float(), g.float()
        self.n, self.tiles = m + k - 1, -(-t // m)

    def forward(self, x, w, b):  # x (B, C, T) channels-first like the trainer; w (Co, Ci, k)
        B, C, T = x.shape
        wt = torch.einsum("aj,oij->aio", self.G, w)            # (n, Ci, Co)
        v = torch.matmul(x, self.Bi.T)                          # (B, C, n*tiles)
        v = v.reshape(B, C, self.n, self.tiles).permute(2, 0, 3, 1).reshape(self.n, B * self.tiles, C)
        h = torch.bmm(v, wt)                                    # (n, B*tiles, Co)
        h = h.reshape(self.n, B, self.tiles, -1).permute(1, 3, 0, 2).reshape(B, -1, self.n * self.tiles)
        return torch.matmul(h, self.Ao.T) + b[:, None]


print("channels C at length T, batch 64: median ms per forward + backward")
for (C, T) in [(64, 16), (128, 8), (256, 4), (512, 4)]:
    B, k = 64, 5
    conv = torch.nn.Conv1d(C, C, k, padding=2)
    wf = WinoFn(T, k)
    x = torch.randn(B, C, T, requires_grad=True)
    go = torch.randn(B, C, T)
    def run_conv():
        y = conv(x); y.backward(go)
    def run_wino():
        y = wf(x, conv.weight, conv.bias); y.backward(go)
    with torch.no_grad():
        d = (wf(x, conv.weight, conv.bias) - conv(x)).abs().max().item()
    ms = interleaved_ms({"conv": run_conv, "wino": run_wino}, torch.device("cpu"), repeats=20, warmup=5)
    mc, mw = ms["conv"], ms["wino"]
    print(f"C={C} T={T}: conv {mc:.2f} ms, winograd {mw:.2f} ms ({mc/mw:.2f}x), diff {d:.1e}")
