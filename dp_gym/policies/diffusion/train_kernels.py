"""Training-time forms of two UNet layers that run faster on CPU, with the same parameters,
state-dict keys and results to float rounding. Inference (no autograd) always takes PyTorch's own
path, so sampling and the exported runtimes see plain ``nn.Conv1d`` / ``nn.Mish`` arithmetic.

Written by hand because no library ships them: they route around slow CPU kernels measured on
the small UNet's shapes (``benchmarks/train_kernels.py``): oneDNN's float32 convolutions over the
deepest level's 4 positions (replaced by Winograd's minimal filtering, 7 multiplies per channel
pair instead of 20), its bfloat16 weight gradient for short sequences, ATen's GroupNorm backward
over 4 positions, and ATen's Mish forward + backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dp_gym.policies.diffusion.winograd import whole_axis_pays, winograd_whole
from dp_gym.policies.kernels import enabled, pytorch_kernels

__all__ = ["Conv1d", "GroupNorm", "Mish", "pytorch_kernels"]


class _Bf16Conv1dFunction(torch.autograd.Function):
    """A same-padded stride-1 bfloat16 1-D convolution whose weight gradient is computed as a
    forward convolution. oneDNN's bfloat16 weight-gradient kernel runs the UNet's shortest
    sequences (T = 4) at about a third of its forward speed on CPU; the same gradient,
    ``dW[o, c, k] = sum_(b, t) g[b, o, t] x[b, c, t + k - p]``, is the forward convolution of
    ``x`` with the batch and channel axes swapped by ``g`` read the same way, which oneDNN runs
    2-2.5x faster: the layer's forward + backward 1.1-1.3x (``benchmarks/train_kernels.py``).
    The input gradient stays oneDNN's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv1d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        with torch.autocast("cpu", enabled=False):
            if ctx.needs_input_grad[0]:
                # Asking oneDNN for the input gradient alone: a mask with the weight or bias set
                # runs its slow weight-gradient kernel too.
                grad_x = torch.ops.aten.convolution_backward(
                    grad, x, weight, None, [1], [p], [1], False, [0], 1, [True, False, False])[0]
            if ctx.needs_input_grad[1]:
                # Time-reversing both operands gives dW in (out, in, k) order and layout directly.
                grad_t = grad.flip(-1).transpose(0, 1).contiguous()
                x_t = x.flip(-1).transpose(0, 1).contiguous()
                grad_w = F.conv1d(grad_t, x_t, padding=p)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad.sum((0, 2), dtype=torch.float32).to(grad.dtype)
        return grad_x, grad_w, grad_b, None


class _WholeAxisConv1dFunction(torch.autograd.Function):
    """A same-padded stride-1 float32 1-D convolution over an axis of t <= 4 positions by one
    Winograd tile with the roles swapped (:func:`~dp_gym.policies.diffusion.winograd.winograd_whole`):
    the inputs and weights go to the 2t - 1 transform points by small constant matrix products,
    one batched GEMM per point multiplies them, a constant matrix takes the result back to
    positions; the backward pass is the same three steps transposed. At the small UNet's deepest
    level (256 channels, 4 positions, batch 64) this does 7 channel GEMMs' worth of multiplies
    where oneDNN's convolution does 20, and runs forward + backward 1.1-1.7x faster (it varies
    between runs; ``benchmarks/train_kernels.py``).

    Layouts are chosen so that no weight is transposed in memory except the gradient's last
    (k, C_out, C_in) → (C_out, C_in, k) copy: the transformed weights are (n, C_out, C_in) and the
    GEMMs read them transposed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transform_in: torch.Tensor,
                transform_out: torch.Tensor, transform_w: torch.Tensor) -> torch.Tensor:
        b, c_in, t = x.shape
        c_out, k = weight.shape[0], weight.shape[2]
        n = transform_w.shape[0]  # transform points; transform_in has n * tiles rows, point-major
        w = torch.mm(transform_w, weight.reshape(c_out * c_in, k).t()).view(n, c_out, c_in)
        v = torch.mm(transform_in, x.reshape(b * c_in, t).t()).view(n, -1, c_in)  # (n, tiles * B, C_in)
        h = torch.bmm(v, w.transpose(1, 2))  # (n, tiles * B, C_out)
        y = torch.mm(transform_out, h.view(-1, b * c_out)).view(t, b, c_out).permute(1, 2, 0).contiguous()
        if bias is not None:
            y = y + bias[:, None]
        ctx.save_for_backward(v, w, transform_in, transform_out, transform_w)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, w, transform_in, transform_out, transform_w = ctx.saved_tensors
        n, c_out, c_in = w.shape
        b, t, k = grad.shape[0], transform_out.shape[0], transform_w.shape[1]
        grad = grad.contiguous()
        grad_h = torch.mm(transform_out.t(), grad.view(b * c_out, t).t()).view(n, -1, c_out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_v = torch.bmm(grad_h, w)  # (n, tiles * B, C_in)
            grad_x = torch.mm(transform_in.t(), grad_v.view(-1, b * c_in)).view(t, b, c_in).permute(1, 2, 0).contiguous()
        if ctx.needs_input_grad[1]:
            grad_wt = torch.bmm(grad_h.transpose(1, 2), v)  # (n, C_out, C_in)
            grad_w = torch.mm(transform_w.t(), grad_wt.view(n, c_out * c_in)).view(k, c_out, c_in).permute(1, 2, 0).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0).sum(1)  # 6x faster than one reduction over (0, 2) at (64, 256, 4)
        return grad_x, grad_w, grad_b, None, None, None


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` (same parameters and state-dict keys) that trains faster on CPU over short
    sequences: a same-padded stride-1 convolution over at most ``SHORT_SEQUENCE`` steps runs, in
    float32, by Winograd's minimal filtering where that needs fewer multiplies
    (:class:`_WholeAxisConv1dFunction`: 5 taps at 4 steps or fewer), and under bfloat16 autocast
    computes its weight gradient as a forward convolution (:class:`_Bf16Conv1dFunction`). Every
    other case is ``nn.Conv1d``'s own path."""

    # Both forms stop at 4 steps. The bf16 weight gradient as a forward convolution measured no
    # faster at 8 and 16 (0.86-1.0x; 1.1-1.3x at 4). Winograd over a longer axis needs tiles:
    # F(4, 5) tiles at 8 and 16 steps left the whole training step as fast as before.
    SHORT_SEQUENCE = 4

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=padding)
        self._same_padded = kernel_size == 2 * padding + 1
        self._transforms: dict[int, tuple[torch.Tensor, ...]] = {}  # axis length → float32 Winograd matrices

    def _whole_axis_transforms(self, t: int) -> tuple[torch.Tensor, ...]:
        if t not in self._transforms:
            self._transforms[t] = tuple(m.float().contiguous() for m in winograd_whole(self.kernel_size[0], t))
        return self._transforms[t]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        if not (enabled() and self._same_padded and x.device.type == "cpu" and torch.is_grad_enabled()):
            return super().forward(x)
        if not torch.is_autocast_enabled("cpu"):
            if x.dtype == torch.float32 and x.ndim == 3 and t <= self.SHORT_SEQUENCE and whole_axis_pays(self.kernel_size[0], t):
                return _WholeAxisConv1dFunction.apply(x, self.weight, self.bias, *self._whole_axis_transforms(t))
            return super().forward(x)
        if t <= self.SHORT_SEQUENCE and torch.get_autocast_dtype("cpu") == torch.bfloat16:
            # Cast as autocast would (input, weight and bias to bfloat16), then run the function
            # with autocast off; the casts' backward returns float32 gradients to the weights.
            dt = torch.bfloat16
            bias = None if self.bias is None else self.bias.to(dt)
            with torch.autocast("cpu", enabled=False):
                return _Bf16Conv1dFunction.apply(x.to(dt), self.weight.to(dt), bias, self.padding[0])
        return super().forward(x)


class _MishFunction(torch.autograd.Function):
    """Mish, ``x tanh(softplus(x))``, with ``tanh(softplus(x)) = s (2 - s) / (1 + (1 - s)^2)``
    for ``s = sigmoid(x)``: one vectorised sigmoid and a few multiplies instead of ATen's
    exp/log1p/tanh, forward and backward. It computes in float32 and rounds once to the input's
    dtype, as ATen does (relative error 3e-7 over [-30, 30] in float32, as ATen's; the form has
    no cancellation at either end)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        s = torch.sigmoid(x32)
        t = (2 - s).mul_(s).div_((1 - s).square_().add_(1))
        ctx.save_for_backward(x32, s, t)
        return (x32 * t).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, s, t = ctx.saved_tensors
        # d/dx [x t(x)] = t + x s (1 - t^2), since dt/dx = (1 - t^2) sigmoid(x)
        return (grad.float() * torch.addcmul(t, x * s, 1 - t * t)).to(grad.dtype)


class Mish(nn.Mish):
    """``nn.Mish`` that, when autograd records a float32 or bfloat16 CPU input, runs
    :class:`_MishFunction` (2.1-2.3x ATen's forward + backward on the UNet's activations)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (enabled() and x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.bfloat16)):
            return _MishFunction.apply(x)
        return super().forward(x)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict keys) that trains faster on CPU over the
    UNet's shortest sequences: with autograd recording a float32 (B, C, T) input of at most
    ``SHORT_SEQUENCE`` steps, it normalises as ``F.layer_norm`` over each group's (C / G, T) values
    and applies the per-channel affine after, which runs forward + backward 2.0-2.5x faster than
    ATen's group norm at T = 4 (its backward is slow for such short rows) and 0.5-0.6x at T >= 8,
    where it is not used. Same values to float rounding (~1e-6)."""

    SHORT_SEQUENCE = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (enabled() and x.ndim == 3 and x.shape[-1] <= self.SHORT_SEQUENCE and x.dtype == torch.float32 and x.device.type == "cpu"
                and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and self.affine):
            b, c, t = x.shape
            h = F.layer_norm(x.reshape(b, self.num_groups, -1), ((c // self.num_groups) * t,), eps=self.eps).view(b, c, t)
            return _ChannelAffineFunction.apply(h, self.weight, self.bias)
        return super().forward(x)


class _ChannelAffineFunction(torch.autograd.Function):
    """``h * weight[:, None] + bias[:, None]`` on (B, C, T), its parameter gradients reduced over
    the batch first and then over time: 6x faster than autograd's one reduction over (0, 2) for
    these short rows."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        return torch.addcmul(bias[:, None], h, weight[:, None])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, weight = ctx.saved_tensors
        return grad * weight[:, None], (grad * h).sum(0).sum(1), grad.sum(0).sum(1)
