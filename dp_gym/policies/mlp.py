"""What the MLP baselines (explicit BC, implicit BC) share: their config fields and validation,
their size presets, the MLP builder and the action-window slice they are trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dp_gym.policies.config import ImageEncoderConfig, PolicyConfig, validate_policy_fields

ACTIVATIONS: dict[str, type[nn.Module]] = {"mish": nn.Mish, "relu": nn.ReLU, "gelu": nn.GELU}

# Named sizes for ``--model-size`` (hidden widths of the MLP), shared by "bc" and "ibc".
MLP_MODEL_SIZES: dict[str, dict[str, Any]] = {
    "small": dict(hidden_dims=[256, 256]),
    "medium": dict(hidden_dims=[512, 512, 512]),
    "paper": dict(hidden_dims=[1024, 1024, 1024, 1024]),
}


@dataclass
class MLPPolicyConfig(PolicyConfig, ImageEncoderConfig):
    """The fields :class:`~dp_gym.policies.bc.config.BCConfig` and
    :class:`~dp_gym.policies.ibc.config.IBCConfig` share, validated in ``__post_init__``. Image
    observations get the diffusion policy's camera encoder (the
    :class:`~dp_gym.policies.config.ImageEncoderConfig` fields), trained end to end with the MLP.

    Subclasses add only fields with defaults and call ``super().__post_init__()`` first. The chunking
    semantics (``chunked``, ``n_action_steps``, ``horizon``) are described on ``BCConfig``.
    """

    obs_shapes: dict[str, list[int]]
    action_dim: int
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    chunked: bool = True
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "mish"  # "mish" | "relu" | "gelu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        """Normalise and validate the shared fields (raises ValueError)."""
        validate_policy_fields(self)
        self.hidden_dims = [int(d) for d in self.hidden_dims]
        self.chunked = bool(self.chunked)
        self.dropout = float(self.dropout)
        if not self.chunked and self.n_action_steps != 1:
            raise ValueError(
                f"chunked=False predicts one action per step, so it needs n_action_steps == 1 "
                f"(got {self.n_action_steps}); pass --n-action-steps 1, or use chunked=True to predict "
                f"{self.n_action_steps} actions at once"
            )
        if not self.hidden_dims or any(d < 1 for d in self.hidden_dims):
            raise ValueError(f"hidden_dims must be a non-empty list of positive widths, got {self.hidden_dims}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def pred_steps(self) -> int:
        """Number of actions predicted per call (== n_action_steps)."""
        return self.n_action_steps


def build_mlp(in_dim: int, hidden_dims: list[int], out_dim: int, activation: str, dropout: float) -> nn.Sequential:
    """Linear → activation → dropout for every hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden_dims:
        layers += [nn.Linear(d, h), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def action_window(actions: torch.Tensor, n_obs_steps: int, n_action_steps: int) -> torch.Tensor:
    """The executed actions [To-1, To-1+Ta) of a (B, horizon, A) training window."""
    start = n_obs_steps - 1
    if actions.ndim != 3 or actions.shape[1] < start + n_action_steps:
        raise ValueError(f"batch['action'] must have shape (B, >= {start + n_action_steps}, A), got {tuple(actions.shape)}")
    return actions[:, start : start + n_action_steps]
