"""What every dp_gym policy shares: the JSON round trip of its config, and min-max normalisers
for each observation key and for the action (module names ``obs_normalizers`` / ``action_normalizer``,
which are part of the checkpoint format)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

import torch
from torch import nn

from dp_gym.data.normalizer import MinMaxNormalizer

C = TypeVar("C", bound="ConfigDict")


class ConfigDict:
    """Mixin for policy config dataclasses: ``to_dict`` / ``from_dict`` with unknown keys rejected."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**d)

    @property
    def obs_feature_dim(self) -> int:
        return sum(s[0] for s in self.obs_shapes.values())  # type: ignore[attr-defined]


def validate_policy_fields(cfg: Any, positive: tuple[str, ...] = ()) -> None:
    """Normalise and validate what every policy config has (raises ValueError): low-dim
    ``obs_shapes``, positive ``action_dim`` / ``horizon`` / ``n_obs_steps`` / ``n_action_steps``
    (and the extra names in ``positive``), and a horizon covering To-1+Ta."""
    cfg.obs_shapes = {str(k): [int(d) for d in v] for k, v in cfg.obs_shapes.items()}
    if not cfg.obs_shapes:
        raise ValueError("obs_shapes must name at least one observation key")
    for key, shape in cfg.obs_shapes.items():
        if len(shape) != 1 or shape[0] < 1:
            raise ValueError(f"observation {key!r}: only low-dim (D,) shapes are supported here, got {shape}")
    for name in ("action_dim", "horizon", "n_obs_steps", "n_action_steps", *positive):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.n_obs_steps + cfg.n_action_steps - 1 > cfg.horizon:
        raise ValueError(
            f"horizon ({cfg.horizon}) must cover n_obs_steps - 1 + n_action_steps "
            f"({cfg.n_obs_steps - 1} + {cfg.n_action_steps}): executed actions start at index To-1"
        )


class NormalizedPolicy(nn.Module):
    """Base module holding one normaliser per observation key and one for the action."""

    def __init__(self, obs_shapes: dict[str, list[int]], action_dim: int) -> None:
        super().__init__()
        self.obs_normalizers = nn.ModuleDict({k: MinMaxNormalizer(s[0]) for k, s in obs_shapes.items()})
        self.action_normalizer = MinMaxNormalizer(action_dim)

    def fit_normalizers(self, data: dict[str, torch.Tensor]) -> None:
        """Fit the min-max normalisers on the full training arrays (frames on axis 0)."""
        for key in self.obs_normalizers:
            self.obs_normalizers[key].load_state_dict(MinMaxNormalizer.fit(data[key]).state_dict())
        self.action_normalizer.load_state_dict(MinMaxNormalizer.fit(data["action"]).state_dict())

    def normalized_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, To, D_k) per key → (B, To, sum D_k), normalised, keys in config order."""
        return torch.cat([self.obs_normalizers[k].normalize(obs[k].float()) for k in self.obs_normalizers], dim=-1)
