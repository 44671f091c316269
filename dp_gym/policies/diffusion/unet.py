"""ConditionalUnet1D: a 1-D temporal U-Net over action sequences with FiLM conditioning
(Chi et al., RSS 2023, Sec. III-B). Written from the paper's description."""

from __future__ import annotations

import math

import torch
from torch import nn

from dp_gym.policies.diffusion.train_kernels import Conv1d, GroupNorm, Mish


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of a (B,) diffusion step."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class Conv1dBlock(nn.Sequential):
    """Conv1d → GroupNorm → Mish."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            GroupNorm(n_groups, out_ch),
            Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; the condition modulates the first block's output with a per-channel
    FiLM scale and bias. ``film`` maps the condition vector to that (B, 2*out_ch) scale-and-bias;
    ``forward`` takes its output, so a sampler can compute it once for every denoising step."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.out_ch = out_ch
        self.block1 = Conv1dBlock(in_ch, out_ch, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_ch))
        self.residual = Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        scale, bias = film.unsqueeze(-1).chunk(2, dim=1)
        h = scale * h + bias
        h = self.block2(h)
        return h + self.residual(x)


def unet_trunk(net: nn.Module, x: torch.Tensor, film: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """The U-Net's pass over its levels: ``net`` has ``down`` / ``mid`` / ``up`` / ``final`` and
    ``film_sizes`` as :class:`ConditionalUnet1D` builds them (or a module with the same layout over
    other activation layouts, whose channels lie along ``channel_dim``)."""
    films = iter(torch.split(film, net.film_sizes, dim=1))
    skips = []
    for res1, res2, down in net.down:
        x = res2(res1(x, next(films)), next(films))
        skips.append(x)
        x = down(x)
    for res in net.mid:
        x = res(x, next(films))
    for res1, res2, up in net.up:
        x = torch.cat([x, skips.pop()], dim=channel_dim)
        x = res2(res1(x, next(films)), next(films))
        x = up(x)
    return net.final(x)


class ConditionalUnet1D(nn.Module):
    """ε-predictor over (B, horizon, action_dim) action sequences.

    The condition is the diffusion-step embedding concatenated with the flattened observation
    features (B, n_obs_steps, cond_dim) and enters every residual block through FiLM.
    ``horizon`` must be divisible by 2**(len(down_dims)-1).
    """

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        n_obs_steps: int,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 256,
    ) -> None:
        super().__init__()
        if not down_dims:
            raise ValueError("down_dims must not be empty")
        for d in down_dims:
            if d % n_groups:
                raise ValueError(f"every down_dim must be divisible by n_groups={n_groups}, got {down_dims}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.action_dim = action_dim
        self.cond_dim = cond_dim
        self.n_obs_steps = n_obs_steps
        self.n_levels = len(down_dims)
        dsed = diffusion_step_embed_dim
        self.step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, 4 * dsed), nn.Mish(), nn.Linear(4 * dsed, dsed)
        )
        film_dim = dsed + cond_dim * n_obs_steps
        dims = [action_dim, *down_dims]
        pairs = list(zip(dims[:-1], dims[1:]))

        def block(i: int, o: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(i, o, film_dim, kernel_size, n_groups)

        self.down = nn.ModuleList()
        for level, (d_in, d_out) in enumerate(pairs):
            last = level == len(pairs) - 1
            self.down.append(nn.ModuleList([
                block(d_in, d_out), block(d_out, d_out),
                nn.Conv1d(d_out, d_out, 3, stride=2, padding=1) if not last else nn.Identity(),
            ]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up = nn.ModuleList()
        # Every up level doubles the length back: the deepest level did not downsample.
        for d_in, d_out in reversed(pairs[1:]):
            self.up.append(nn.ModuleList([
                block(2 * d_out, d_in), block(d_in, d_in),
                nn.ConvTranspose1d(d_in, d_in, 4, stride=2, padding=1),
            ]))
        self.final = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups), Conv1d(down_dims[0], action_dim, 1)
        )
        self.film_sizes = [2 * blk.out_ch for blk in self._res_blocks()]

    def _res_blocks(self) -> list[ConditionalResidualBlock1D]:
        """Every residual block, in the order :meth:`denoise` applies them."""
        blocks = [b for res1, res2, _ in self.down for b in (res1, res2)] + list(self.mid)
        return blocks + [b for res1, res2, _ in self.up for b in (res1, res2)]

    def condition(self, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B,) diffusion steps and (B, n_obs_steps, cond_dim) features → (B, sum(film_sizes)):
        every residual block's FiLM scale and bias. It depends on (step, observation) only, so
        a sampler computes it for all its steps in one batched call rather than once per step."""
        B = cond.shape[0]
        film = torch.cat([self.step_encoder(timestep), cond.reshape(B, -1)], dim=-1)
        # every block's film is Mish → Linear of the same vector: the Mish once for all blocks
        act, _ = self.down[0][0].film
        film = act(film)
        return torch.cat([blk.film[1](film) for blk in self._res_blocks()], dim=-1)

    def denoise(self, sample: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """The convolutional trunk: (B, horizon, action_dim) and :meth:`condition`'s output →
        the network output, without input checks (it is also what gets exported)."""
        x = sample.transpose(1, 2)  # (B, A, T): convolve over time
        return unet_trunk(self, x, film, channel_dim=1).transpose(1, 2)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        if sample.ndim != 3 or sample.shape[-1] != self.action_dim:
            raise ValueError(f"sample must be (B, horizon, {self.action_dim}), got {tuple(sample.shape)}")
        B = sample.shape[0]
        if cond.shape != (B, self.n_obs_steps, self.cond_dim):
            raise ValueError(f"cond must be ({B}, {self.n_obs_steps}, {self.cond_dim}), got {tuple(cond.shape)}")
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(B)
        return self.denoise(sample, self.condition(t, cond))
