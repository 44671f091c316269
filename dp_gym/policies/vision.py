"""Image observation encoder: ResNet-18 with GroupNorm and a spatial-softmax head, one per camera.

Written in plain torch because no torchvision build works with the CPU torch we target (and we need
GroupNorm instead of BatchNorm and spatial softmax instead of global pooling anyway, which would mean
rewriting torchvision's ResNet after construction). The architecture follows the Diffusion Policy
paper: ResNet-18 trunk trained from scratch, every BatchNorm replaced by GroupNorm with
channels/16 groups, the global average pool replaced by spatial softmax (32 keypoints) and a
linear projection to a per-camera feature (64-d by default).

Images enter as uint8 ``(N, H, W, C)`` (what Gymnasium envs and our datasets hold) and are
converted on the device: random crop in training, centre crop in eval, scaled to [-1, 1].

>>> enc = ImageObsEncoder({"cam": (96, 96, 3)}, crop_shape=(84, 84))
>>> feats = enc({"cam": torch.zeros(5, 96, 96, 3, dtype=torch.uint8)})
>>> tuple(feats.shape)
(5, 64)
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dp_gym.policies.kernels import enabled


def group_norm(channels: int, group_size: int = 16) -> nn.GroupNorm:
    """GroupNorm with ``channels / group_size`` groups (the paper: 16 channels per group)."""
    if channels % group_size:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible by group size {group_size}")
    return nn.GroupNorm(channels // group_size, channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions + identity or 1x1 projection shortcut)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, group_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = group_norm(out_ch, group_size)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = group_norm(out_ch, group_size)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), group_norm(out_ch, group_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Max pool of a contiguous (N, C, H, W) batch run in channels-last layout, with its gradient
    scattered back through the pool's flat per-plane indices (the same in either layout) and
    summed in float32 (ATen's channels-first backward sums in the input's dtype)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
        out, idx = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, return_indices=True)
        ctx.save_for_backward(idx.contiguous())
        ctx.shape = x.shape
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        n, c, h, w = ctx.shape
        grad_x = grad.new_zeros(n, c, h * w, dtype=torch.float32)
        grad_x.scatter_add_(2, idx.view(n, c, -1), grad.contiguous().view(n, c, -1).float())
        return grad_x.view(n, c, h, w).to(grad.dtype), None, None, None


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools a contiguous CPU (N, C, H, W) batch in channels-last layout and
    hands it back contiguous: the same values bit for bit, and in float32 the same gradient (in
    bfloat16 the gradient's sums are rounded once instead of per addition).
    PyTorch's channels-first CPU kernel runs the stem's 3x3 / 2 pool 4-6x slower than its
    channels-last one, layout copies included, and the gradient is scattered through the pool's
    indices rather than by the channels-last backward, which is slow too
    (``benchmarks/maxpool_layout.py``). Exports, compiled graphs and
    :func:`~dp_gym.policies.kernels.pytorch_kernels` keep the plain pool."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # the square, undilated, floor-mode pools the channels-last form is written for
        self._channels_last_form = (self.dilation == 1 and not self.ceil_mode and not self.return_indices
                                    and all(isinstance(v, int) for v in (self.kernel_size, self.stride, self.padding)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self._channels_last_form and enabled() and x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()
                and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling()):
            if not (x.requires_grad and torch.is_grad_enabled()):
                return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), self.kernel_size, self.stride,
                                    self.padding).contiguous()
            return _ChannelsLastMaxPool.apply(x, self.kernel_size, self.stride, self.padding)
        return super().forward(x)


class ResNet18Trunk(nn.Module):
    """ResNet-18 up to the last residual stage (no pooling, no classifier): (N, C, H, W) →
    (N, 8 * width, h, w). ``width`` is the stem's channel count (64 in ResNet-18; the stages have
    width, 2, 4 and 8 times width): a narrower trunk has width² / 64² of the parameters and
    convolution work, for CPU-sized training."""

    def __init__(self, in_channels: int = 3, group_size: int = 16, width: int = 64) -> None:
        super().__init__()
        if width < 1 or width % group_size:
            raise ValueError(f"ResNet width must be a positive multiple of the GroupNorm group size {group_size}, got {width}")
        self.out_channels = 8 * width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), group_norm(width, group_size), nn.ReLU(), MaxPool2d(3, 2, 1)
        )
        stages = []
        in_ch = width
        for out_ch, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            stages.append(nn.Sequential(BasicBlock(in_ch, out_ch, stride, group_size), BasicBlock(out_ch, out_ch, 1, group_size)))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map: a 1x1 conv gives ``num_keypoints`` heat maps, each is
    softmax-normalised over space, and its expected (x, y) in [-1, 1] is returned: (N, 2K)."""

    def __init__(self, in_channels: int, num_keypoints: int = 32) -> None:
        super().__init__()
        self.to_keypoints = nn.Conv2d(in_channels, num_keypoints, 1)
        self.num_keypoints = num_keypoints

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        n, _, h, w = feat.shape
        heat = self.to_keypoints(feat).flatten(2)  # (N, K, h*w)
        attn = torch.softmax(heat, dim=-1)
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=feat.device, dtype=attn.dtype),
            torch.linspace(-1, 1, w, device=feat.device, dtype=attn.dtype),
            indexing="ij",
        )
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # (h*w, 2)
        return (attn @ grid).reshape(n, 2 * self.num_keypoints)


def crop_images(images: torch.Tensor, crop_shape: tuple[int, int], random: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop ``(N, H, W, C)`` images to ``crop_shape``: an independent random window per image when
    ``random``, else the centre window. Gathers with one vectorised index (no Python loop)."""
    n, h, w, _ = images.shape
    ch, cw = crop_shape
    if ch > h or cw > w:
        raise ValueError(f"crop {crop_shape} is larger than the image ({h}, {w})")
    if (ch, cw) == (h, w):
        return images
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return images[:, top : top + ch, left : left + cw]
    dev = images.device
    top = torch.randint(0, h - ch + 1, (n,), generator=generator, device="cpu").to(dev)
    left = torch.randint(0, w - cw + 1, (n,), generator=generator, device="cpu").to(dev)
    rows = (top[:, None] + torch.arange(ch, device=dev))[:, :, None]  # (N, ch, 1)
    cols = (left[:, None] + torch.arange(cw, device=dev))[:, None, :]  # (N, 1, cw)
    return images[torch.arange(n, device=dev)[:, None, None], rows, cols]  # (N, ch, cw, C)


class CameraEncoder(nn.Module):
    """One camera: uint8 (N, H, W, C) → crop → [-1, 1] float (N, C, h, w) → ResNet-18 (GroupNorm) →
    spatial softmax → linear → (N, feature_dim)."""

    def __init__(self, image_shape: Sequence[int], crop_shape: Sequence[int] | None = (84, 84), feature_dim: int = 64,
                 num_keypoints: int = 32, group_size: int = 16, width: int = 64) -> None:
        super().__init__()
        h, w, c = (int(s) for s in image_shape)
        self.image_shape = (h, w, c)
        self.crop_shape = (h, w) if crop_shape is None else (int(crop_shape[0]), int(crop_shape[1]))
        self.trunk = ResNet18Trunk(c, group_size, width)
        self.keypoints = SpatialSoftmax(self.trunk.out_channels, num_keypoints)
        self.project = nn.Linear(2 * num_keypoints, feature_dim)
        self.feature_dim = feature_dim

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, C) → float (N, C, h, w) in [-1, 1], cropped (random in train mode)."""
        x = crop_images(images, self.crop_shape, random=self.training)
        return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed float (N, C, h, w) → (N, feature_dim)."""
        return self.project(self.keypoints(self.trunk(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.preprocess(images))


class ImageObsEncoder(nn.Module):
    """One :class:`CameraEncoder` per image key; ``forward`` maps ``{key: uint8 (N, H, W, C)}`` to
    the per-camera features concatenated in key order, (N, n_cameras * feature_dim)."""

    def __init__(self, image_shapes: dict[str, Sequence[int]], crop_shape: Sequence[int] | None = (84, 84),
                 feature_dim: int = 64, num_keypoints: int = 32, group_size: int = 16, width: int = 64) -> None:
        super().__init__()
        if not image_shapes:
            raise ValueError("ImageObsEncoder needs at least one image key")
        self.cameras = nn.ModuleDict({
            k: CameraEncoder(s, crop_shape, feature_dim, num_keypoints, group_size, width) for k, s in image_shapes.items()
        })
        self.feature_dim = feature_dim * len(image_shapes)

    def forward(self, images: dict[str, torch.Tensor],
                camera_features: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``camera_features(key, x)``, when given, replaces each camera's :meth:`CameraEncoder.features`
        on its preprocessed images (an accelerated runtime computing the same function)."""
        run = camera_features or (lambda k, x: self.cameras[k].features(x))
        return torch.cat([run(k, enc.preprocess(images[k])) for k, enc in self.cameras.items()], dim=-1)
