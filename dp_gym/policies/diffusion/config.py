"""Configuration of the diffusion policy (one dataclass, validated in ``__post_init__``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dp_gym.policies.base import ConfigDict


@dataclass
class DiffusionConfig(ConfigDict):
    """Everything needed to rebuild a :class:`DiffusionPolicy` (saved as JSON in checkpoints).

    ``obs_shapes`` maps each observation key to its per-step shape. Low-dim keys have shape
    ``(D,)`` and are concatenated in the order given. Defaults follow the paper's Push-T setup
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
    sampler: str = "ddpm"  # "ddpm" | "ddim"
    num_inference_steps: int = 100

    def __post_init__(self) -> None:
        self.obs_shapes = {str(k): [int(d) for d in v] for k, v in self.obs_shapes.items()}
        self.down_dims = [int(d) for d in self.down_dims]
        if not self.obs_shapes:
            raise ValueError("obs_shapes must name at least one observation key")
        for key, shape in self.obs_shapes.items():
            if len(shape) != 1 or shape[0] < 1:
                raise ValueError(f"observation {key!r}: only low-dim (D,) shapes are supported here, got {shape}")
        for name in ("action_dim", "horizon", "n_obs_steps", "n_action_steps", "num_train_timesteps", "num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_obs_steps + self.n_action_steps - 1 > self.horizon:
            raise ValueError(
                f"horizon ({self.horizon}) must cover n_obs_steps - 1 + n_action_steps "
                f"({self.n_obs_steps - 1} + {self.n_action_steps}): executed actions start at index To-1"
            )
        if self.denoiser not in ("unet", "transformer"):
            raise ValueError(f"denoiser must be 'unet' or 'transformer', got {self.denoiser!r}")
        if self.denoiser == "unet":
            factor = 2 ** (len(self.down_dims) - 1)
            if self.horizon % factor:
                raise ValueError(f"UNet with {len(self.down_dims)} levels needs horizon divisible by {factor}, got {self.horizon}")
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {self.sampler!r}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError("num_inference_steps cannot exceed num_train_timesteps")





# Named model sizes for the CLI. "paper" is the paper's Push-T UNet; "small" trains ~10x faster on CPU.
MODEL_SIZES = {
    "small": dict(down_dims=[64, 128, 256], diffusion_step_embed_dim=128, n_layer=4, n_emb=128),
    "medium": dict(down_dims=[128, 256, 512], diffusion_step_embed_dim=128, n_layer=6, n_emb=192),
    "paper": dict(down_dims=[256, 512, 1024], diffusion_step_embed_dim=256, n_layer=8, n_emb=256),
}
