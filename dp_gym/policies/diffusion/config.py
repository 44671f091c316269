"""Configuration of the diffusion policy (one dataclass, validated in ``__post_init__``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dp_gym.policies.config import ImageEncoderConfig, PolicyConfig, validate_policy_fields
from dp_gym.policies.diffusion.scheduler import PREDICTION_TYPES


@dataclass
class DiffusionConfig(PolicyConfig, ImageEncoderConfig):
    """Everything needed to rebuild a :class:`DiffusionPolicy` (saved as JSON in checkpoints).

    ``obs_shapes`` maps each observation key to its per-step shape. Low-dim keys have shape
    ``(D,)`` and are concatenated in the order given; image keys have shape ``(H, W, C)`` (uint8,
    as envs return them) and get one ResNet-18 encoder each (the fields of
    :class:`~dp_gym.policies.config.ImageEncoderConfig`). Defaults follow the paper's Push-T setup
    (Tp=16, To=2, Ta=8, 100 DDPM steps, squaredcos_cap_v2, ε-prediction, samples clipped to ±1).
    """

    obs_shapes: dict[str, list[int]]
    action_dim: int
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    denoiser: str = "unet"  # "unet" | "transformer"
    # ConditionalUnet1D
    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 256
    # Transformer denoiser
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.3
    causal_attn: bool = True
    n_cond_layers: int = 0
    # Diffusion
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    # What the denoiser predicts: "epsilon" (the noise; the paper's choice) or "sample" (the clean
    # action sequence x₀). Checkpoints from before this field load as "epsilon".
    prediction_type: str = "epsilon"
    sampler: str = "ddpm"  # "ddpm" | "ddim"
    num_inference_steps: int = 100
    # Training-only augmentation: Gaussian noise of this std (in normalised units, where the data
    # spans [-1, 1]) added to the low-dim observation features, as robomimic's Gaussian-noise obs
    # randomiser does; makes the policy less sensitive to states slightly off the demos. 0 = off.
    obs_noise_std: float = 0.0

    def __post_init__(self) -> None:
        validate_policy_fields(self, positive=("num_train_timesteps", "num_inference_steps", "kernel_size",
                                               "n_groups", "diffusion_step_embed_dim", "n_layer", "n_head", "n_emb"))
        self.down_dims = [int(d) for d in self.down_dims]
        if self.denoiser not in ("unet", "transformer"):
            raise ValueError(f"denoiser must be 'unet' or 'transformer', got {self.denoiser!r}")
        if self.denoiser == "unet":
            factor = 2 ** (len(self.down_dims) - 1)
            if self.horizon % factor:
                raise ValueError(f"UNet with {len(self.down_dims)} levels needs horizon divisible by {factor}, got {self.horizon}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {self.sampler!r}")
        self.obs_noise_std = float(self.obs_noise_std)
        if not math.isfinite(self.obs_noise_std) or self.obs_noise_std < 0:
            raise ValueError(f"obs_noise_std must be a finite number >= 0, got {self.obs_noise_std}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError("num_inference_steps cannot exceed num_train_timesteps")



# Named model sizes for the CLI. "paper" is the paper's Push-T UNet; "small" trains ~10x faster on CPU.
MODEL_SIZES = {
    "small": dict(down_dims=[64, 128, 256], diffusion_step_embed_dim=128, n_layer=4, n_emb=128),
    "medium": dict(down_dims=[128, 256, 512], diffusion_step_embed_dim=128, n_layer=6, n_emb=192),
    "paper": dict(down_dims=[256, 512, 1024], diffusion_step_embed_dim=256, n_layer=8, n_emb=256),
}
