"""Exponential moving average of weights with the warm-up decay used by Diffusion Policy:
decay(step) = 1 - (1 + step / inv_gamma) ** -power, clipped to [min_value, max_value]."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, power: float = 0.75, inv_gamma: float = 1.0, min_value: float = 0.0, max_value: float = 0.9999) -> None:
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.inv_gamma, self.min_value, self.max_value = power, inv_gamma, min_value, max_value
        self.step = 0

    def decay(self, step: int) -> float:
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay(self.step)
        ema_params = list(self.averaged.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)  # ema = d*ema + (1-d)*p
        for eb, b in zip(self.averaged.buffers(), model.buffers()):
            eb.copy_(b)
        self.step += 1
