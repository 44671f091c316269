"""Diffusion policy: network (denoiser) + loss (ε-MSE) + sampler (DDPM / DDIM)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from dp_gym.policies.diffusion.accelerate import DenoisingLoop, SamplingAccelerator
from dp_gym.policies.diffusion.config import MODEL_SIZES, DiffusionConfig
from dp_gym.policies.diffusion.scheduler import NoiseScheduler
from dp_gym.policies.diffusion.unet import ConditionalUnet1D
from dp_gym.policies.policy import DEFAULT_WEIGHT_DECAY, Policy, check_obs
from dp_gym.policies.registry import register_policy


@register_policy("diffusion")
class DiffusionPolicy(Policy):
    """Conditional DDPM over action sequences of length ``horizon``, conditioned on the last
    ``n_obs_steps`` observations. ``predict_chunk`` returns the ``n_action_steps`` actions starting
    at index To-1 (the current step) of the sampled sequence."""

    config_class = DiffusionConfig
    model_sizes = MODEL_SIZES
    samples_horizon = True
    stochastic = True
    samplers = ("ddpm", "ddim")
    accepts_step_count = True
    accepts_noise_scale = True
    accelerable = True

    @classmethod
    def config_from_options(cls, options, obs_shapes, action_dim):
        """The base class's config plus ``options.denoiser`` (the denoising network)."""
        return {**super().config_from_options(options, obs_shapes, action_dim), "denoiser": options.denoiser}

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__(config)
        c = config
        if c.denoiser == "unet":
            self.denoiser = ConditionalUnet1D(
                action_dim=c.action_dim, cond_dim=c.obs_feature_dim, n_obs_steps=c.n_obs_steps,
                down_dims=tuple(c.down_dims), kernel_size=c.kernel_size, n_groups=c.n_groups,
                diffusion_step_embed_dim=c.diffusion_step_embed_dim,
            )
        else:
            from dp_gym.policies.diffusion.transformer import TransformerDenoiser

            self.denoiser = TransformerDenoiser(
                action_dim=c.action_dim, horizon=c.horizon, cond_dim=c.obs_feature_dim, n_obs_steps=c.n_obs_steps,
                n_layer=c.n_layer, n_head=c.n_head, n_emb=c.n_emb, p_drop_emb=c.p_drop_emb,
                p_drop_attn=c.p_drop_attn, causal_attn=c.causal_attn, n_cond_layers=c.n_cond_layers,
            )
        self.scheduler = NoiseScheduler(c.num_train_timesteps, c.beta_schedule, c.clip_sample, prediction_type=c.prediction_type)
        self.accelerator: SamplingAccelerator | None = None  # see PolicyAgent.accelerate
        self.build_image_encoder()

    # --- training -------------------------------------------------------------------------
    def optim_groups(self, weight_decay: float | None = None) -> list[dict[str, Any]]:
        """As the paper trains its denoisers: the UNet with ``DEFAULT_WEIGHT_DECAY`` (1e-6) on every
        parameter; the transformer with 1e-3 on its weight matrices only (not on biases, LayerNorm
        or the position embeddings, see ``TransformerDenoiser.get_optim_groups``) and 1e-6 on the
        image encoder. An explicit ``weight_decay`` replaces the 1e-6 / 1e-3 of the denoiser."""
        if self.config.denoiser == "unet":
            return super().optim_groups(weight_decay)
        groups = self.denoiser.get_optim_groups(1e-3 if weight_decay is None else weight_decay)
        in_denoiser = {id(p) for p in self.denoiser.parameters()}
        rest = [p for p in self.parameters() if id(p) not in in_denoiser]
        return groups + ([{"params": rest, "weight_decay": DEFAULT_WEIGHT_DECAY}] if rest else [])

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        obs = {k: batch[k][:, : self.config.n_obs_steps] for k in self.config.obs_shapes}
        check_obs(obs, self.config.obs_shapes, self.config.n_obs_steps)
        cond = self.encode_obs(obs, obs_noise_std=self.config.obs_noise_std if self.training else 0.0)
        x0 = self.action_normalizer.normalize(batch["action"])
        B = x0.shape[0]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.config.num_train_timesteps, (B,), device=x0.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        return F.mse_loss(self.denoiser(x_t, t, cond), self.scheduler.training_target(x0, noise))

    # --- sampling -------------------------------------------------------------------------
    def noise_shape(self, num_inference_steps: int | None = None, sampler: str | None = None) -> tuple[int, int, int]:
        """Per-sample noise a call consumes: (draws, horizon, action_dim). DDIM needs only the
        initial draw; DDPM one more per step except the last."""
        c = self.config
        steps = num_inference_steps or c.num_inference_steps
        draws = 1 if (sampler or c.sampler) == "ddim" else steps
        return (draws, c.horizon, c.action_dim)

    def make_accelerator(self, mode: str, autocast: str = "no", sampler: str | None = None,
                         num_inference_steps: int | None = None, **_: object) -> SamplingAccelerator:
        """A :class:`~dp_gym.policies.diffusion.accelerate.SamplingAccelerator` running the
        denoising loop of ``sampler`` / ``num_inference_steps`` (default: the config's) in
        ``mode`` under ``autocast``; other sampling keywords (``noise_scale``) do not change the
        loop and are ignored."""
        return SamplingAccelerator(self, mode, autocast, sampler, num_inference_steps)

    @torch.inference_mode()
    def sample_actions(
        self,
        obs: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        sampler: str | None = None,
        num_inference_steps: int | None = None,
        accelerator: SamplingAccelerator | None = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        """Sample a full (B, horizon, action_dim) action sequence in environment units.

        The Gaussian draws come from ``noise`` (B, *noise_shape()) when given (so callers can make
        each sample's randomness independent of the batch it is in), else from ``generator``.
        ``accelerator`` (default: :attr:`accelerator`, set by ``PolicyAgent.accelerate``) runs
        the denoising loop compiled / graph-captured / autocast; it must match sampler and steps.
        ``noise_scale`` multiplies every Gaussian draw (a sampling temperature): 1 is the trained
        model's distribution; 0 starts DDIM from x_T = 0 and removes DDPM's per-step noise, so the
        sample no longer depends on the draws (the low-temperature, mode-seeking end).
        """
        c = self.config
        check_obs(obs, c.obs_shapes, c.n_obs_steps)
        if not (isinstance(noise_scale, (int, float)) and math.isfinite(noise_scale) and noise_scale >= 0):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale!r}")
        sampler = sampler or c.sampler
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        steps = num_inference_steps or c.num_inference_steps
        acc = accelerator if accelerator is not None else self.accelerator
        if acc is not None and not acc.matches(sampler, steps):
            raise ValueError(f"the accelerator was built for {acc.sampler}-{acc.num_inference_steps}, "
                             f"this call asks for {sampler}-{steps}")
        cond = acc.encode_obs(self, obs) if acc is not None else self.encode_obs(obs)  # once per call, not per step
        B, dev = cond.shape[0], cond.device
        draws_shape = (B, *self.noise_shape(steps, sampler))
        if noise is None:
            noise = torch.randn(draws_shape, generator=generator, device=dev, dtype=torch.float32)
        elif tuple(noise.shape) != draws_shape:
            raise ValueError(f"noise must have shape {draws_shape}, got {tuple(noise.shape)}")
        noise = noise.to(device=dev, dtype=torch.float32) * noise_scale
        if acc is not None:
            x = acc(cond, noise)
        else:
            x = DenoisingLoop(self.denoiser, self.scheduler, sampler, steps)(cond, noise)
        return self.action_normalizer.unnormalize(x)

    def predict_chunk(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        """(B, n_action_steps, action_dim): the actions to execute from the current step on."""
        seq = self.sample_actions(obs, generator=generator, **kw)
        start = self.config.n_obs_steps - 1
        return seq[:, start : start + self.config.n_action_steps]
