"""Explicit behaviour cloning: an MLP regressing actions from the observation history (MSE).

The baseline the diffusion policy paper compares against: with multimodal demonstrations MSE
regression predicts the mean of the modes, which may itself be a bad action.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dp_gym.policies.bc.config import BCConfig
from dp_gym.policies.mlp import MLP_MODEL_SIZES, action_window, build_mlp
from dp_gym.policies.policy import Policy, check_obs
from dp_gym.policies.registry import register_policy


@register_policy("bc")
class BCPolicy(Policy):
    """MLP from the flattened (To, F) observation history (normalised low-dim keys, camera
    features when the task has images) to the ``n_action_steps`` normalised actions starting at
    the current step. Deterministic: ``predict_chunk`` takes no noise, so the agent draws none for it."""

    config_class = BCConfig
    model_sizes = MLP_MODEL_SIZES

    def __init__(self, config: BCConfig) -> None:
        super().__init__(config)
        c = config
        self.net = build_mlp(c.n_obs_steps * c.obs_feature_dim, c.hidden_dims, c.pred_steps * c.action_dim, c.activation, c.dropout)
        self.build_image_encoder()

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised action predictions, (B, n_action_steps, A)."""
        out = self.net(self.encode_obs(obs).flatten(1))
        return out.view(out.shape[0], self.config.pred_steps, self.config.action_dim)

    # --- training -------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.config
        obs = {k: batch[k][:, : c.n_obs_steps] for k in c.obs_shapes}
        target = self.action_normalizer.normalize(action_window(batch["action"], c.n_obs_steps, c.pred_steps))
        return F.mse_loss(self(obs), target)

    # --- acting ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, n_action_steps, action_dim) in environment units. ``generator`` is accepted for
        interface compatibility and unused (the policy is deterministic)."""
        check_obs(obs, self.config.obs_shapes, self.config.n_obs_steps)
        return self.action_normalizer.unnormalize(self(obs))
