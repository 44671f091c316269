"""Training-time forms of two UNet layers that run faster on CPU, with the same parameters,
state-dict keys and results to float rounding. Inference (no autograd) always takes PyTorch's own
path, so sampling and the exported runtimes see plain ``nn.Conv1d`` / ``nn.Mish`` arithmetic.

Written by hand because no library ships them: they route around two slow CPU kernels measured
on the small UNet's shapes (``benchmarks/train_kernels.py``): oneDNN's bfloat16 weight gradient
for short sequences, and ATen's Mish forward + backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dp_gym.policies.kernels import enabled, pytorch_kernels

__all__ = ["Conv1d", "Mish", "pytorch_kernels"]


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


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` (same parameters and state-dict keys) that trains faster under CPU bfloat16
    autocast: there, a same-padded stride-1 convolution over at most ``SHORT_SEQUENCE`` steps
    computes its weight gradient as a forward convolution (:class:`_Bf16Conv1dFunction`). Every
    other case is ``nn.Conv1d``'s own path."""

    # Longer sequences measured no faster that way (0.86-1.0x at 8 and 16 steps; 1.1-1.3x at 4);
    # in float32 oneDNN's weight gradient is not slow, and the form measured 0.94-0.98x.
    SHORT_SEQUENCE = 4

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=padding)
        self._same_padded = kernel_size == 2 * padding + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (enabled() and self._same_padded and x.shape[-1] <= self.SHORT_SEQUENCE and x.device.type == "cpu" and torch.is_grad_enabled()
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16):
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
