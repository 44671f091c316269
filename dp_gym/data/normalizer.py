"""Per-dimension min-max normalisation to [-1, 1], kept as module buffers so it is saved inside
the policy checkpoint (safetensors) and moves with the model between devices."""

from __future__ import annotations

import torch
from torch import nn


class MinMaxNormalizer(nn.Module):
    """Maps each feature dimension linearly from [min, max] to [-1, 1].

    Dimensions whose range is below ``eps`` (constant in the data) are only centred, not scaled, so
    they map to 0 instead of dividing by ~0.

    >>> n = MinMaxNormalizer.fit(torch.tensor([[0.0, 5.0], [10.0, 5.0]]))
    >>> n.normalize(torch.tensor([[5.0, 5.0]]))
    tensor([[0., 0.]])
    """

    def __init__(self, dim: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("data_min", torch.full((dim,), -1.0))
        self.register_buffer("data_max", torch.full((dim,), 1.0))

    @classmethod
    def fit(cls, data: torch.Tensor, eps: float = 1e-4) -> "MinMaxNormalizer":
        data = torch.as_tensor(data, dtype=torch.float32)
        flat = data.reshape(-1, data.shape[-1])
        if not torch.isfinite(flat).all():
            raise ValueError("cannot fit a normaliser on data containing NaN or inf")
        norm = cls(flat.shape[-1], eps)
        lo, hi = flat.min(0).values, flat.max(0).values
        rng = hi - lo
        const = rng < eps
        scale = torch.where(const, torch.ones_like(rng), 2.0 / rng.clamp_min(eps))
        offset = torch.where(const, -(hi + lo) / 2, -1.0 - lo * scale)
        norm.scale.copy_(scale)
        norm.offset.copy_(offset)
        norm.data_min.copy_(lo)
        norm.data_max.copy_(hi)
        return norm

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"normaliser expects last dimension {self.dim}, got shape {tuple(x.shape)}")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return x * self.scale + self.offset

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        return (y - self.offset) / self.scale
