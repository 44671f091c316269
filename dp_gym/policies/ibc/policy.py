"""Implicit behaviour cloning (Florence et al., CoRL 2021): an energy model E(o, a) trained with
InfoNCE against uniform counter-examples, acted with a derivative-free optimiser (DFO).

Randomness is reproducible: every random number the optimiser uses is derived from one standard
normal tensor per batch element (shape :meth:`IBCPolicy.noise_shape`), which the caller may pass
(``noise=``, as :class:`~dp_gym.agent.PolicyAgent` does per env) or have drawn from
``generator``. Uniform draws are obtained from normals through the normal CDF.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dp_gym.policies.ibc.config import IBCConfig, validate_dfo_args
from dp_gym.policies.mlp import ACTIVATIONS, MLP_MODEL_SIZES, action_window, build_mlp
from dp_gym.policies.policy import Policy, check_obs
from dp_gym.policies.registry import register_policy


def dfo_noise_shape(action_shape: Sequence[int], n_samples: int, n_iters: int) -> tuple[int, int, int]:
    """Per-batch-element standard normals :func:`dfo_minimize` consumes: (n_iters + 1, n_samples,
    D + 1) with D = prod(action_shape). Row 0, columns [:D]: the initial uniform candidates (via the
    normal CDF); row 0, column D, entry 0: the uniform of the final draw when ``select="sample"``.
    Row i >= 1: columns [:D] the Gaussian perturbation of round i, column D the uniform that picks
    each candidate's parent in the resampling of round i."""
    return (n_iters + 1, n_samples, math.prod(action_shape) + 1)


def dfo_minimize(
    energy_fn: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    action_shape: Sequence[int],
    *,
    n_samples: int = 1024,
    n_iters: int = 3,
    noise_scale: float = 0.33,
    noise_shrink: float = 0.5,
    temperature: float = 1.0,
    select: str = "argmax",
    bounds: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Approximately minimise ``energy_fn`` over the box ``bounds`` for every batch element.

    ``energy_fn(actions)`` maps candidates (B, S, *action_shape) to energies (B, S). The optimiser
    (IBC's derivative-free optimiser) draws ``n_samples`` uniform candidates; then, ``n_iters``
    times: resamples them with replacement with probabilities softmax(-E / temperature), adds
    Gaussian noise of std ``noise_scale`` (multiplied by ``noise_shrink`` after each round) and
    clamps to the bounds. It returns, shape (B, *action_shape), the candidate with the lowest final
    energy (``select="argmax"``, IBC's choice: the highest-probability one), or one candidate drawn
    with probabilities softmax(-E / temperature) (``select="sample"``: a sample from the energy
    model's distribution, which with several equally good modes picks each of them, where argmax
    keeps returning the one whose learnt energy happens to be lowest).

    Randomness comes from ``noise`` (B, *dfo_noise_shape(...)) standard normals when given, else
    from normals drawn with ``generator``; a batch element's result depends only on its own noise.
    """
    validate_dfo_args(n_samples, n_iters, noise_scale, noise_shrink, temperature, select)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not hi > lo:
        raise ValueError(f"bounds must satisfy low < high, got {bounds}")
    action_shape = tuple(int(d) for d in action_shape)
    B, S, D = batch_size, n_samples, math.prod(action_shape)
    shape = (B, *dfo_noise_shape(action_shape, n_samples, n_iters))
    if noise is None:
        noise = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device if generator is not None else "cpu")
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    if device is not None:
        noise = noise.to(device)
    noise = noise.to(dtype=dtype)

    def energies(x: torch.Tensor) -> torch.Tensor:
        e = energy_fn(x.view(B, S, *action_shape))
        if tuple(e.shape) != (B, S):
            raise ValueError(f"energy_fn must return shape {(B, S)}, got {tuple(e.shape)}")
        return e

    def draw(energy: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Indices drawn with probabilities softmax(-energy / temperature) by inverting the CDF at
        the uniforms ndtr(z); energy (B, S), z (B, K) → (B, K)."""
        cdf = torch.softmax(-energy / temperature, dim=-1).cumsum(-1)
        u = torch.special.ndtr(z) * cdf[:, -1:]  # uniform in [0, total mass)
        return torch.searchsorted(cdf.contiguous(), u.contiguous()).clamp_max(S - 1)

    x = lo + (hi - lo) * torch.special.ndtr(noise[:, 0, :, :D])  # (B, S, D) uniform in the box
    std = float(noise_scale)
    rows = torch.arange(B, device=x.device)
    for i in range(1, n_iters + 1):
        x = x[rows[:, None], draw(energies(x), noise[:, i, :, D])]  # resample with replacement
        x = (x + std * noise[:, i, :, :D]).clamp(lo, hi)
        std *= noise_shrink
    e = energies(x)
    best = e.argmin(dim=-1) if select == "argmax" else draw(e, noise[:, 0, :1, D])[:, 0]
    return x[rows, best].view(B, *action_shape)


@register_policy("ibc")
class IBCPolicy(Policy):
    """Energy MLP over [flattened obs history features, flattened normalised action chunk]; the
    history features are the normalised low-dim keys and, when the task has images, camera features.

    The first layer acts on the concatenation; it is split into an observation part (computed once
    per observation) and an action part (computed per candidate), which is the same linear map.
    """

    config_class = IBCConfig
    model_sizes = MLP_MODEL_SIZES
    stochastic = True  # the DFO's candidates and resampling draw from noise_shape() normals

    def __init__(self, config: IBCConfig) -> None:
        super().__init__(config)
        c = config
        h0 = c.hidden_dims[0]
        self.obs_in = nn.Linear(c.n_obs_steps * c.obs_feature_dim, h0)
        self.act_in = nn.Linear(c.pred_steps * c.action_dim, h0, bias=False)
        head: list[nn.Module] = [ACTIVATIONS[c.activation]()]
        if c.dropout > 0:
            head.append(nn.Dropout(c.dropout))
        head.append(build_mlp(h0, c.hidden_dims[1:], 1, c.activation, c.dropout))
        self.head = nn.Sequential(*head)
        self.build_image_encoder()

    @property
    def action_shape(self) -> tuple[int, int]:
        return (self.config.pred_steps, self.config.action_dim)

    def energy(self, obs_feat: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """E(o, a): obs_feat (B, To*F), normalised candidate actions (B, S, Ta, A) or (B, S, Ta*A)
        → energies (B, S). Lower is better."""
        a = actions.flatten(2) if actions.ndim == 4 else actions
        h = self.obs_in(obs_feat)[:, None, :] + self.act_in(a)
        return self.head(h).squeeze(-1)

    # --- training -------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """InfoNCE: the demonstrated action among ``n_counter_examples`` uniform counter-examples in
        [-1, 1], at a random position; cross-entropy on logits -E."""
        c = self.config
        obs_feat = self.encode_obs({k: batch[k][:, : c.n_obs_steps] for k in c.obs_shapes}).flatten(1)
        pos = self.action_normalizer.normalize(action_window(batch["action"], c.n_obs_steps, c.pred_steps)).flatten(1)
        B, D = pos.shape
        N = c.n_counter_examples
        cands = torch.rand(B, N + 1, D, device=pos.device, dtype=pos.dtype) * 2 - 1
        target = torch.randint(0, N + 1, (B,), device=pos.device)
        cands[torch.arange(B, device=pos.device), target] = pos
        return F.cross_entropy(-self.energy(obs_feat, cands), target)

    # --- acting ---------------------------------------------------------------------------
    def _dfo_kwargs(self, **overrides) -> dict:
        """The config's DFO settings with the non-None ``overrides`` applied."""
        c = self.config
        kw = dict(n_samples=c.n_samples, n_iters=c.n_iters, noise_scale=c.noise_scale, noise_shrink=c.noise_shrink,
                  temperature=c.temperature, select=c.dfo_select)
        unknown = set(overrides) - set(kw)
        if unknown:
            raise TypeError(f"unknown IBC sampling arguments {sorted(unknown)}; known: {sorted(kw)}")
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return kw

    def noise_shape(self, **dfo_overrides) -> tuple[int, int, int]:
        """Per-observation standard normals one ``predict_chunk(**dfo_overrides)`` call consumes
        (see :func:`dfo_noise_shape`)."""
        kw = self._dfo_kwargs(**dfo_overrides)
        return dfo_noise_shape(self.action_shape, kw["n_samples"], kw["n_iters"])

    @torch.no_grad()
    def predict_chunk(
        self,
        obs: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        n_samples: int | None = None,
        n_iters: int | None = None,
        noise_scale: float | None = None,
        noise_shrink: float | None = None,
        temperature: float | None = None,
        select: str | None = None,
    ) -> torch.Tensor:
        """(B, n_action_steps, action_dim) in environment units: the DFO minimiser of E(o, ·).
        Randomness from ``noise`` (B, *noise_shape(...)) when given, else from ``generator``;
        the DFO settings (``n_samples`` ... ``select``) default to the config's."""
        check_obs(obs, self.config.obs_shapes, self.config.n_obs_steps)
        obs_feat = self.encode_obs(obs).flatten(1)  # once per observation, not per candidate
        best = dfo_minimize(
            lambda a: self.energy(obs_feat, a), obs_feat.shape[0], self.action_shape,
            generator=generator, noise=noise, device=obs_feat.device, dtype=obs_feat.dtype,
            **self._dfo_kwargs(n_samples=n_samples, n_iters=n_iters, noise_scale=noise_scale,
                               noise_shrink=noise_shrink, temperature=temperature, select=select),
        )
        return self.action_normalizer.unnormalize(best)
