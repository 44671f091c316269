"""DDPM / DDIM noise schedules for ε-prediction (the paper's) or x₀-prediction ("sample").

Written here rather than taken from ``diffusers`` because the policy needs (a) a denoising loop
with no host syncs that can be graph-captured (training constants are device tensors, a sampling
step's coefficients plain Python floats), (b) a
stateless sampler object that several envs / threads can share (diffusers' schedulers mutate
``self.timesteps`` in ``set_timesteps``), and (c) batched per-sample timesteps. The tests check
these against the closed forms and against ``diffusers`` when it is installed.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def betas_for_schedule(name: str, num_train_timesteps: int) -> torch.Tensor:
    if name == "squaredcos_cap_v2":
        # Nichol & Dhariwal 2021 cosine schedule, betas capped at 0.999.
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        T = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    if name == "linear":
        return torch.linspace(1e-4, 2e-2, num_train_timesteps, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {name!r}; expected 'squaredcos_cap_v2' or 'linear'")


PREDICTION_TYPES = ("epsilon", "sample")


class NoiseScheduler(nn.Module):
    """Forward noising q(x_t | x_0) and reverse DDPM / DDIM steps, all in tensors (buffers).

    ``prediction_type`` says what the network outputs: ``"epsilon"`` (the noise ε, the paper's
    choice) or ``"sample"`` (x₀ itself, as e.g. 3D Diffusion Policy does). The steps take the raw
    network output and convert it, as diffusers' schedulers do."""

    def __init__(self, num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2", clip_sample: bool = True,
                 clip_range: float = 1.0, prediction_type: str = "epsilon") -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps
        self.clip_sample = clip_sample
        self.clip_range = clip_range
        betas = betas_for_schedule(beta_schedule, num_train_timesteps)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        # float64 for the derivation, stored as float32 (persistent=False: rebuilt from the config).
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas", alphas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        # The same values as Python floats for the sampling steps: a step's coefficients are then
        # plain numbers, not 0-d tensor ops (about a dozen fewer kernel calls per step).
        self._alphas_cumprod = alphas_cumprod.float().tolist()

    # --- training -------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε, with per-sample t of shape (B,)."""
        ab = self.alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is regressed onto: ε or x₀, per ``prediction_type``."""
        return noise if self.prediction_type == "epsilon" else x0

    # --- sampling -------------------------------------------------------------------------
    def timesteps(self, num_inference_steps: int) -> list[int]:
        """Descending timesteps used at inference (evenly strided, 'leading' spacing)."""
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {num_inference_steps}")
        ratio = self.num_train_timesteps // num_inference_steps
        return [i * ratio for i in reversed(range(num_inference_steps))]

    def _split(self, model_output: torch.Tensor, x_t: torch.Tensor, ab_t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂₀ clipped, ε̂ unclipped) from the network output. ε̂ is derived from the unclipped x̂₀
        when the network predicts x₀ (diffusers' default ``use_clipped_model_output=False``)."""
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        else:
            x0 = model_output
            eps = (x_t - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0, eps

    def ddpm_step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor, noise: torch.Tensor | None, prev_t: int | None = None) -> torch.Tensor:
        """One ancestral step x_t → x_{prev_t} (prev_t = t-1 by default; strided when fewer
        inference steps are used). ``noise`` is the Gaussian draw for this step (ignored at t=0)."""
        prev_t = t - 1 if prev_t is None else prev_t
        ab_t = self._alphas_cumprod[t]
        ab_prev = self._alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
        beta_t = 1 - ab_t / ab_prev
        x0, _ = self._split(model_output, x_t, ab_t)
        mean = (math.sqrt(ab_prev) * beta_t / (1 - ab_t)) * x0 + (math.sqrt(1 - beta_t) * (1 - ab_prev) / (1 - ab_t)) * x_t
        if prev_t < 0 or noise is None:
            return mean
        var = max((1 - ab_prev) / (1 - ab_t) * beta_t, 1e-20)  # "fixed_small" posterior variance
        return mean + math.sqrt(var) * noise

    def ddim_step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor, prev_t: int) -> torch.Tensor:
        """Deterministic DDIM step (η = 0) x_t → x_{prev_t}.

        As in the paper's setup (diffusers' default ``use_clipped_model_output=False``), the
        direction term uses the network's ε (with x₀-prediction: the ε implied by the unclipped
        x̂₀), not one re-derived from the clipped x̂₀."""
        ab_t = self._alphas_cumprod[t]
        ab_prev = self._alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
        x0, eps = self._split(model_output, x_t, ab_t)
        return math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
