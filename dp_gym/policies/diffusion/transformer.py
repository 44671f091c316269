"""Time-series diffusion transformer denoiser (Chi et al., RSS 2023).

This is the "minGPT-style" transformer variant of the Diffusion Policy noise
prediction network.  The noisy action sequence is the decoder input (one token
per action step); the diffusion step and the per-step observation features form
the conditioning sequence that the decoder cross-attends to:

* action tokens  = ``Linear(action_dim -> n_emb)`` + learned positional
  embedding (``horizon`` positions), followed by dropout;
* cond tokens    = ``[sinusoidal(timestep)]`` (one token) followed by
  ``Linear(cond_dim -> n_emb)`` of each observation step, + learned
  positional embedding (``1 + n_obs_steps`` positions), followed by dropout
  and a condition encoder (``n_cond_layers`` pre-norm transformer encoder
  layers, or a small ``Linear -> Mish -> Linear`` MLP when ``n_cond_layers``
  is 0);
* decoder        = ``n_layer`` pre-norm ``nn.TransformerDecoderLayer``;
* head           = ``LayerNorm`` + ``Linear(n_emb -> action_dim)``.

With ``causal_attn=True`` action token ``t`` self-attends only to action tokens
``<= t`` and cross-attends to the diffusion-step token and to observation
tokens ``s`` (position in the cond sequence, the step token being ``s = 0``)
with ``t >= s - 1``, i.e. to observation steps ``0..t``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Union

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalPosEmb", "TransformerDenoiser"]


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a (batch of) scalar(s), as in DDPM / Transformer.

    Maps ``x`` of shape ``(B,)`` to ``(B, dim)``: ``[sin(x * f_i), cos(x * f_i)]``
    with geometrically spaced frequencies ``f_i`` from 1 to 1/10000.  An odd
    ``dim`` is zero-padded by one column.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"SinusoidalPosEmb: dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.max_period = float(max_period)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 1:
            raise ValueError(f"SinusoidalPosEmb expects a 1-D tensor (B,), got shape {tuple(x.shape)}")
        half = self.dim // 2
        x = x.to(torch.float32)
        if half == 0:
            return torch.zeros(x.shape[0], self.dim, device=x.device, dtype=x.dtype)
        scale = math.log(self.max_period) / max(half - 1, 1)
        freqs = torch.exp(torch.arange(half, device=x.device, dtype=torch.float32) * -scale)
        args = x[:, None] * freqs[None, :]
        emb = torch.cat([args.sin(), args.cos()], dim=-1)
        if self.dim % 2 == 1:
            emb = nn.functional.pad(emb, (0, 1))
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _check_pos_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TransformerDenoiser: {name} must be a positive int, got {value!r}")


def _check_prob(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"TransformerDenoiser: {name} must be a float in [0, 1), got {value!r}")


class TransformerDenoiser(nn.Module):
    """ε-prediction transformer for Diffusion Policy.

    Args:
        action_dim: dimension of one action.
        horizon: number of action steps in the denoised sequence.
        cond_dim: dimension of the per-step observation feature.
        n_obs_steps: number of observation steps in ``cond``.
        n_layer: number of transformer decoder layers.
        n_head: number of attention heads (must divide ``n_emb``).
        n_emb: token embedding width.
        p_drop_emb: dropout applied to the input / cond token embeddings.
        p_drop_attn: dropout inside the transformer layers.
        causal_attn: causal self-attention over action tokens and the
            "action t sees obs <= t" cross-attention mask.
        n_cond_layers: number of transformer encoder layers applied to the
            cond tokens; 0 uses a small MLP instead.
    """

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int,
        n_obs_steps: int,
        n_layer: int = 8,
        n_head: int = 4,
        n_emb: int = 256,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.3,
        causal_attn: bool = True,
        n_cond_layers: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("action_dim", action_dim),
            ("horizon", horizon),
            ("cond_dim", cond_dim),
            ("n_obs_steps", n_obs_steps),
            ("n_layer", n_layer),
            ("n_head", n_head),
            ("n_emb", n_emb),
        ):
            _check_pos_int(name, value)
        if isinstance(n_cond_layers, bool) or not isinstance(n_cond_layers, int) or n_cond_layers < 0:
            raise ValueError(f"TransformerDenoiser: n_cond_layers must be a non-negative int, got {n_cond_layers!r}")
        if n_emb % n_head != 0:
            raise ValueError(f"TransformerDenoiser: n_emb ({n_emb}) must be divisible by n_head ({n_head})")
        _check_prob("p_drop_emb", p_drop_emb)
        _check_prob("p_drop_attn", p_drop_attn)

        self.action_dim = action_dim
        self.horizon = horizon
        self.cond_dim = cond_dim
        self.n_obs_steps = n_obs_steps
        self.n_emb = n_emb
        self.causal_attn = bool(causal_attn)
        self.n_cond_layers = n_cond_layers
        n_cond_tokens = 1 + n_obs_steps  # diffusion-step token + one per obs step

        # --- action (decoder input) tokens
        self.input_emb = nn.Linear(action_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.drop = nn.Dropout(p_drop_emb)

        # --- condition (memory) tokens
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, n_cond_tokens, n_emb))
        # Pre-norm GELU layers with a 4x feed-forward, shared by the cond encoder and the decoder.
        layer_kw = dict(d_model=n_emb, nhead=n_head, dim_feedforward=4 * n_emb, dropout=p_drop_attn,
                        activation="gelu", batch_first=True, norm_first=True)
        if n_cond_layers > 0:
            enc_layer = nn.TransformerEncoderLayer(**layer_kw)
            self.encoder: nn.Module = nn.TransformerEncoder(
                enc_layer, num_layers=n_cond_layers, enable_nested_tensor=False
            )
        else:
            self.encoder = nn.Sequential(
                nn.Linear(n_emb, 4 * n_emb),
                nn.Mish(),
                nn.Linear(4 * n_emb, n_emb),
            )

        # --- decoder
        dec_layer = nn.TransformerDecoderLayer(**layer_kw)
        self.decoder = nn.TransformerDecoder(dec_layer, num_layers=n_layer)

        # --- attention masks (bool, True = "may NOT attend"), not saved in state_dict
        if self.causal_attn:
            t_idx = torch.arange(horizon)
            tgt_mask = t_idx[None, :] > t_idx[:, None]  # key position > query position
            s_idx = torch.arange(n_cond_tokens)
            memory_mask = ~(t_idx[:, None] >= (s_idx[None, :] - 1))  # allow t >= s - 1
            self.register_buffer("tgt_mask", tgt_mask, persistent=False)
            self.register_buffer("memory_mask", memory_mask, persistent=False)
        else:
            self.tgt_mask = None
            self.memory_mask = None

        # --- head
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)

        self.apply(self._init_weights)
        nn.init.normal_(self.pos_emb, mean=0.0, std=0.02)
        nn.init.normal_(self.cond_pos_emb, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ init
    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                w = getattr(module, name, None)
                if w is not None:
                    nn.init.normal_(w, mean=0.0, std=0.02)
            for name in ("in_proj_bias", "bias_k", "bias_v"):
                b = getattr(module, name, None)
                if b is not None:
                    nn.init.zeros_(b)
            # out_proj is an nn.Linear subclass and is handled by the branch above.
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------ optimizer
    def get_optim_groups(self, weight_decay: float = 1e-3) -> List[Dict[str, Any]]:
        """Two AdamW param groups, as for minGPT / the Diffusion Policy transformer.

        Weight decay is applied to the weight matrices of ``nn.Linear`` and of
        ``nn.MultiheadAttention`` input projections; biases, LayerNorm
        parameters, embeddings and the positional embeddings are not decayed.
        """
        decay, no_decay = set(), set()
        whitelist = (nn.Linear, nn.MultiheadAttention)
        blacklist = (nn.LayerNorm, nn.Embedding)
        for mn, m in self.named_modules():
            for pn, _ in m.named_parameters(recurse=False):
                fpn = f"{mn}.{pn}" if mn else pn
                if pn.endswith("bias") or pn.startswith("bias"):
                    no_decay.add(fpn)
                elif pn.endswith("weight") and isinstance(m, whitelist):
                    decay.add(fpn)
                elif pn.endswith("weight") and isinstance(m, blacklist):
                    no_decay.add(fpn)
                elif pn in ("pos_emb", "cond_pos_emb"):
                    no_decay.add(fpn)
        params = dict(self.named_parameters())
        overlap = decay & no_decay
        missing = params.keys() - (decay | no_decay)
        if overlap:
            raise RuntimeError(f"parameters in both decay and no_decay groups: {sorted(overlap)}")
        if missing:
            raise RuntimeError(f"parameters not assigned to an optimizer group: {sorted(missing)}")
        return [
            {"params": [params[n] for n in sorted(decay)], "weight_decay": float(weight_decay)},
            {"params": [params[n] for n in sorted(no_decay)], "weight_decay": 0.0},
        ]

    # --------------------------------------------------------------- forward
    def _prepare_timestep(self, timestep: Union[Tensor, int, float], batch: int, device: torch.device) -> Tensor:
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(timestep, device=device)
        timestep = timestep.to(device)
        if timestep.dim() == 0:
            timestep = timestep[None]
        if timestep.dim() != 1 or timestep.shape[0] not in (1, batch):
            raise ValueError(
                f"TransformerDenoiser: timestep must be a scalar, shape (1,) or shape ({batch},), "
                f"got shape {tuple(timestep.shape)}"
            )
        return timestep.expand(batch)

    def forward(self, sample: Tensor, timestep: Union[Tensor, int, float], cond: Tensor) -> Tensor:
        """Predict the noise of ``sample``.

        Args:
            sample: ``(B, horizon, action_dim)`` noisy action sequence.
            timestep: ``(B,)`` diffusion step (int or float), or a scalar /
                0-d tensor broadcast over the batch.
            cond: ``(B, n_obs_steps, cond_dim)`` per-step observation features.

        Returns:
            ``(B, horizon, action_dim)`` ε prediction.
        """
        if sample.dim() != 3 or sample.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(
                f"TransformerDenoiser: expected sample of shape (B, {self.horizon}, {self.action_dim}), "
                f"got {tuple(sample.shape)}"
            )
        batch = sample.shape[0]
        if cond.dim() != 3 or cond.shape != (batch, self.n_obs_steps, self.cond_dim):
            raise ValueError(
                f"TransformerDenoiser: expected cond of shape ({batch}, {self.n_obs_steps}, {self.cond_dim}), "
                f"got {tuple(cond.shape)}"
            )
        timestep = self._prepare_timestep(timestep, batch, sample.device)
        return self.denoise(sample, self.condition(timestep, cond))

    def condition(self, timestep: Tensor, cond: Tensor) -> Tensor:
        """(B,) diffusion steps and (B, n_obs_steps, cond_dim) features → the (B, 1 + n_obs_steps,
        n_emb) memory the decoder cross-attends to. It depends on (step, observation) only, so a
        sampler computes it for all its steps in one batched call rather than once per step."""
        time_tok = self.time_emb(timestep).to(dtype=cond.dtype)[:, None, :]  # (B, 1, n_emb)
        obs_tok = self.cond_obs_emb(cond)  # (B, n_obs_steps, n_emb)
        cond_tok = torch.cat([time_tok, obs_tok], dim=1) + self.cond_pos_emb
        return self.encoder(self.drop(cond_tok))

    def denoise(self, sample: Tensor, memory: Tensor) -> Tensor:
        """The decoder: (B, horizon, action_dim) and :meth:`condition`'s memory → the network
        output, without input checks (it is also what gets exported)."""
        x = self.drop(self.input_emb(sample) + self.pos_emb)
        x = self.decoder(tgt=x, memory=memory, tgt_mask=self.tgt_mask, memory_mask=self.memory_mask)
        return self.head(self.ln_f(x))
