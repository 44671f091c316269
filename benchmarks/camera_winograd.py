"""The ResNet-18 camera network's 3x3 stride-1 convolutions (20 frames: a 10-env chunk of an
image policy, To = 2, 84x84 crops) in OpenVINO: its own Conv2d against the same layer by 2-D
Winograd F(m x m, 3 x 3) written as ONNX matrix products (the form that speeds up the UNet
trunk's 1-D convolutions), one thread, calls interleaved. Measured, not built: the camera network
keeps OpenVINO's own convolutions.

    python benchmarks/camera_winograd.py
"""
import torch
from torch import nn
from dp_gym.policies.diffusion.accelerate import OnnxModel, _OpenVinoSession
from dp_gym.policies.diffusion.winograd import winograd_tiling
from dp_gym.perf import interleaved_ms
torch.set_num_threads(1)

class Wino2d(nn.Module):
    """A 3x3, stride-1, padding-1 Conv2d by F(m x m, 3 x 3): separable input and output transforms
    (constant matrices along H and W), one batched GEMM per transform point."""

    def __init__(self, conv, H, m):
        super().__init__()
        Bh, Ah, g = winograd_tiling(m, 3, H)
        n, t = m + 2, -(-H // m)
        w = conv.weight.detach().double()  # (Co, Ci, 3, 3)
        U = torch.einsum("ak,bl,oikl->abio", g, g, w).reshape(n * n, w.shape[1], w.shape[0])
        self.register_buffer("Bh", Bh.float()); self.register_buffer("BhT", Bh.T.contiguous().float())
        self.register_buffer("Ah", Ah.float()); self.register_buffer("AhT", Ah.T.contiguous().float())
        self.register_buffer("U", U.float()); self.register_buffer("b", conv.bias.detach().view(1, -1, 1, 1).clone())
        self.n, self.t, self.ci, self.co = n, t, w.shape[1], w.shape[0]
    def forward(self, x):
        N = x.shape[0]; n, t = self.n, self.t
        v = torch.matmul(torch.matmul(self.Bh, x), self.BhT)   # (N, C, n*t, n*t)
        v = v.reshape(N, self.ci, n, t, n, t).permute(2, 4, 0, 3, 5, 1).reshape(n * n, N * t * t, self.ci)
        h = torch.matmul(v, self.U)                              # (n*n, N*t*t, Co)
        h = h.reshape(n, n, N, t, t, self.co).permute(2, 5, 0, 3, 1, 4).reshape(N, self.co, n * t, n * t)
        return torch.matmul(torch.matmul(self.Ah, h), self.AhT) + self.b

print("channels, map size: ms per call (median) and speed-up over OpenVINO's Conv2d; max |difference| from PyTorch")
for C, H in [(64, 21), (128, 11), (256, 6), (512, 3)]:
    conv = nn.Conv2d(C, C, 3, padding=1)
    x = torch.randn(20, C, H, H)
    with torch.no_grad(): ref = conv(x)
    fns = {}
    for name, mod in [("conv", conv)] + [(f"wino m={m}", Wino2d(conv, H, m)) for m in (2, 4)]:
        with torch.no_grad(): d = (mod(x) - ref).abs().max().item()
        onnx = OnnxModel.export(mod, {"x": (C, H, H)})
        s = _OpenVinoSession(onnx, 20, 1)
        fns[name] = lambda s=s: s.run(None, {"x": x.numpy()})
        print(C, H, name, f"diff {d:.1e}")
    ms = interleaved_ms(fns, torch.device("cpu"), repeats=15, warmup=3)
    print(C, H, {k: f"{v:.2f} ms ({ms['conv']/v:.2f}x)" for k, v in ms.items()})
