"""Faster sampling for :class:`DiffusionPolicy` without changing what it computes.

The whole K-step denoising loop is one module call (:class:`DenoisingLoop`). The denoiser's
conditioning (diffusion-step embedding, FiLM scale/bias or the transformer's memory) depends only
on (step, observation), so the loop computes it for all K steps in one batched call and then runs
only the denoiser's trunk per step. Modes:

* ``"openvino"`` (the CPU default of :class:`~dp_gym.agent.PolicyAgent`) and ``"onnx"``: the
  trunk runs in OpenVINO's CPU plugin or in ONNX Runtime, from the same exported ONNX model. The
  UNet is exported time-major (:class:`_TimeMajorUnet`: activations (B, T, C) throughout, each
  convolution a constant 0/1 gather plus one GEMM, GroupNorm a fused LayerNorm; from
  ``WINOGRAD_MIN_BATCH`` samples on (``WINOGRAD_MIN_BATCH_LARGE`` for the paper-size UNet),
  OpenVINO runs the 'same' convolutions by Winograd's minimal
  filtering F(4, k), :class:`_WinogradConv`, 2.5x fewer multiplies for 5 taps, 2.9x at the
  deepest level's 4 positions), where PyTorch
  runs these small 1-D convolutions through its im2col fallback one sample at a time and a plain
  export spends most of its time in transposes, pads and slices; an image policy's camera
  networks run there too. OpenVINO fuses the many small elementwise nodes (GroupNorm, Mish, FiLM,
  residuals) into its kernels, which ONNX Runtime runs one by one: 1.1-1.25x faster per chunk
  (``benchmarks/results/perf_cpu`` has the measured speed-ups). The scheduler steps stay in
  PyTorch. The trunk is exported at first use (about a second for the small UNet) and cached on
  disk (see :func:`cache_dir`), keyed by a hash of weights, architecture, input shape and torch
  version; ``"openvino"`` falls back to ``"onnx"`` when OpenVINO is missing or fails;
* ``"compile"`` (``torch.compile``) and ``"cuda_graph"`` (the loop captured as one CUDA graph and
  replayed: on a GPU the eager loop is bound by kernel-launch overhead);
* ``"eager"``: plain PyTorch, the reference.

Optionally the encoder and loop run under bf16/fp16 autocast. The runtimes run float32, except
``"openvino"`` with ``autocast="bf16"``: OpenVINO's CPU plugin then runs the camera networks and
the trunk in bfloat16 (AMX / AVX-512-BF16 units; 1.4-2.3x faster per paper-size UNet pass, but
actions move by about 1e-2 of the action range, ten times the float32 paths' tolerance, so it is
never the default). Every
accelerated mode falls back to the eager loop (with the reason in
:attr:`SamplingAccelerator.fallback_reason` and a one-line warning) when it is unavailable or
fails, so the same code runs everywhere. ``$DP_GYM_ACCELERATE`` overrides the agent's default mode
(e.g. ``DP_GYM_ACCELERATE=eager``).

>>> import torch
>>> from dp_gym import PolicyAgent
>>> policy = PolicyAgent.from_pretrained("zoo:pusht_keypoints/diffusion").policy
>>> fast, eager = (SamplingAccelerator(policy, mode=m, sampler="ddim", num_inference_steps=10) for m in ("onnx", "eager"))
>>> obs = {"obs": torch.zeros(1, 2, 20)}  # (batch, To, keypoints + agent position)
>>> noise = torch.randn(1, *policy.noise_shape(), generator=torch.Generator().manual_seed(0))
>>> a, b = (policy.sample_actions(obs, noise=noise, sampler="ddim", num_inference_steps=10, accelerator=acc)
...         for acc in (fast, eager))
>>> a.shape, bool((a - b).abs().max() < 1e-3 * 512)  # same actions to 1e-3 of the 512-px range
(torch.Size([1, 16, 2]), True)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import io
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from dp_gym.policies.diffusion.winograd import whole_axis_pays, winograd_tiling, winograd_whole

MODES = ("eager", "compile", "cuda_graph", "onnx", "openvino")
# The modes that run exported ONNX models, and the runtime each uses.
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
PRECISIONS = {"onnxruntime": ("f32",), "openvino": ("f32", "bf16")}  # what each runtime can be asked to run in
AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ACCELERATE_ENV = "DP_GYM_ACCELERATE"
CACHE_ENV = "DP_GYM_CACHE_DIR"
ONNX_EXPORT_VERSION = 2  # bump when the exported graph's inputs/outputs change
ONNX_CACHE_KEEP = 16  # exported models kept on disk (least recently used removed first)
# Runtime sessions (one per model, batch size, threads and runtime) are kept in memory while their
# models' bytes together stay under this, least recently used dropped first: an agent over n envs
# meets every batch size from 1 to n as episodes end at different steps, and recompiling costs
# ~0.3-0.6 s each time (the small UNet's trunk is 18 MB, the paper UNet's 260 MB).
ONNX_SESSIONS_BYTES = 1 << 30
# Models larger than this get one session with a dynamic batch axis for every batch size instead:
# a fixed-batch paper-UNet trunk session holds 0.5-0.8 GB and takes 1-4.6 s to compile, so ten
# batch sizes would not stay in memory and would recompile over and over, while the dynamic
# session runs its passes only 2-7% slower (the small UNet's 17-43% slower, hence fixed batches
# below this size; benchmarks/dynamic_batch.py).
ONNX_DYNAMIC_BATCH_BYTES = 100 << 20
# From this batch size on, OpenVINO runs the UNet trunk with its 'same' convolutions in Winograd
# form (:class:`_WinogradConv`). Per trunk pass, one thread, against the plain GEMM form (small /
# paper UNet; benchmarks/trunk_winograd.py): 0.50x / 0.52x at batch 1, 0.89x / 1.12x at 3,
# 1.04x / 1.36x at 4, 1.15x / 1.56x at 5, 1.37x / 1.80x at 10. A UNet whose weights exceed
# ONNX_DYNAMIC_BATCH_BYTES (the paper UNet) gains from 3 samples.
WINOGRAD_MIN_BATCH = 5
WINOGRAD_MIN_BATCH_LARGE = 3


def runtime_autocasts(mode: str) -> tuple[str, ...]:
    """The ``autocast`` values a runtime mode accepts: "no" (float32) and each reduced precision
    its runtime can run in (OpenVINO: "bf16")."""
    return tuple("no" if p == "f32" else p for p in PRECISIONS[RUNTIMES[mode]])


def default_mode(device: torch.device | str) -> str:
    """The sampling mode an agent uses unless told otherwise: ``$DP_GYM_ACCELERATE`` when set,
    else ``"openvino"`` on CPU (which itself falls back to ``"onnx"``, then ``"eager"``) and
    ``"eager"`` elsewhere."""
    env = os.environ.get(ACCELERATE_ENV, "").strip()
    if env:
        if env not in MODES:
            raise ValueError(f"${ACCELERATE_ENV} must be one of {MODES}, got {env!r}")
        return env
    return "openvino" if torch.device(device).type == "cpu" else "eager"


def _importable(module: str) -> str | None:
    """None when ``module`` imports, else why not."""
    try:
        importlib.import_module(module)
        return None
    except ImportError as e:
        return f"{module} is not installed ({e})"


def cache_dir() -> Path:
    """Where exported models are cached: ``$DP_GYM_CACHE_DIR``, else ``$XDG_CACHE_HOME/dp_gym``,
    else ``~/.cache/dp_gym``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dp_gym"


class DenoisingLoop(nn.Module):
    """x_T (noise[:, 0]) → x_0 in normalised action space, all steps in one call, no host syncs:
    timesteps are Python ints fixed at construction and every constant is a device buffer.

    ``trunk(x, c)`` runs the denoiser given its precomputed conditioning ``c`` for one step
    (default: ``denoiser.denoise``; the ONNX mode substitutes an ONNX Runtime session)."""

    def __init__(self, denoiser: nn.Module, scheduler: nn.Module, sampler: str, num_inference_steps: int,
                 trunk: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        self.denoiser = denoiser
        self.scheduler = scheduler
        self.sampler = sampler
        self.timesteps = scheduler.timesteps(num_inference_steps)
        self.trunk = trunk
        device = next(denoiser.parameters()).device
        self.register_buffer("step_ids", torch.tensor(self.timesteps, dtype=torch.long, device=device), persistent=False)

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ts = self.timesteps
        x = noise[:, 0]
        B, K = x.shape[0], len(ts)
        # Conditioning of every step in one batched call, step-major: c[i] is for timestep ts[i].
        steps = self.step_ids[:, None].expand(K, B).reshape(-1)  # no host sync (CUDA-graph capturable)
        c = self.denoiser.condition(steps, cond.repeat(K, *([1] * (cond.ndim - 1))))
        c = c.reshape(K, B, *c.shape[1:])
        trunk = self.trunk if self.trunk is not None else self.denoiser.denoise
        for i, t in enumerate(ts):
            prev_t = ts[i + 1] if i + 1 < len(ts) else -1
            out = trunk(x, c[i])  # ε or x̂₀, per the scheduler's prediction_type
            if self.sampler == "ddim":
                x = self.scheduler.ddim_step(out, t, x, prev_t)
            else:
                x = self.scheduler.ddpm_step(out, t, x, noise[:, i + 1] if prev_t >= 0 else None, prev_t)
        return x


def per_step_loop(denoiser: nn.Module, scheduler: nn.Module, sampler: str, num_inference_steps: int,
                  cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The textbook sampler :class:`DenoisingLoop` is measured and tested against: the full
    denoiser (conditioning included) at every step, under ``no_grad``."""
    ts = scheduler.timesteps(num_inference_steps)
    with torch.no_grad():
        x = noise[:, 0]
        for i, t in enumerate(ts):
            prev_t = ts[i + 1] if i + 1 < len(ts) else -1
            out = denoiser(x, torch.full((x.shape[0],), t, device=x.device), cond)
            if sampler == "ddim":
                x = scheduler.ddim_step(out, t, x, prev_t)
            else:
                x = scheduler.ddpm_step(out, t, x, noise[:, i + 1] if prev_t >= 0 else None, prev_t)
    return x


class _MishExp(nn.Module):
    """Mish as x * n / (n + 2) with n = e^x (e^x + 2), i.e. tanh(softplus(x)) in closed form: the
    runtime's Softplus and Tanh kernels are several times slower than one Exp. x is capped at 20
    inside the exponential, where the ratio is 1 in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(torch.clamp(x, max=20.0))
        n = e * (e + 2)
        return x * n / (n + 2)


def _shift_taps(conv: nn.Conv1d | nn.ConvTranspose1d, t_in: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Output length and the (output position, input position, tap) triples of a 1-D (transposed)
    convolution with zero padding over an input of length ``t_in``."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if isinstance(conv, nn.ConvTranspose1d):
        t_out = (t_in - 1) * s - 2 * p + k + conv.output_padding[0]
        return t_out, [(t, i, j) for j in range(k) for i in range(t_in) for t in [i * s + j - p] if 0 <= t < t_out]
    t_out = (t_in + 2 * p - k) // s + 1
    return t_out, [(t, i, j) for j in range(k) for t in range(t_out) for i in [t * s + j - p] if 0 <= i < t_in]


class _TimeMajorConv(nn.Module):
    """A Conv1d or ConvTranspose1d on a fixed input length, on (B, T, C) activations, as two
    matrix products: a constant 0/1 matrix gathers each output position's k input positions
    (padding and stride included), then one GEMM with K = k * C_in applies the weights. The
    runtime's own convolution handles each batch element with skinny matrices and needs
    transposes around it; this needs neither."""

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d, t_in: int) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1,) or conv.padding_mode != "zeros" or not isinstance(conv.padding, tuple):
            raise ValueError(f"only plain zero-padded convolutions have a time-major form, got {conv}")
        w = conv.weight.detach()
        k = conv.kernel_size[0]
        # weight rows ordered (tap j, input channel i), columns output channels
        if isinstance(conv, nn.ConvTranspose1d):
            self.c_in, self.c_out = w.shape[0], w.shape[1]
            weight = w.permute(2, 0, 1).reshape(k * self.c_in, self.c_out)
        else:
            self.c_out, self.c_in = w.shape[0], w.shape[1]
            weight = w.permute(2, 1, 0).reshape(k * self.c_in, self.c_out)
        self.t_out, taps = _shift_taps(conv, t_in)
        self.k = k
        self.pointwise = k == 1 and conv.stride[0] == 1 and conv.padding[0] == 0
        gather = torch.zeros(self.t_out * k, t_in)
        for t, i, j in taps:
            gather[t * k + j, i] = 1.0
        self.register_buffer("gather", gather)
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else torch.zeros(self.c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T_in, C_in) → (B, T_out, C_out)
        if not self.pointwise:
            x = torch.matmul(self.gather, x).reshape(-1, self.t_out, self.k * self.c_in)
        return torch.matmul(x, self.weight) + self.bias


class _WinogradConv(nn.Module):
    """A stride-1, 3- or 5-tap Conv1d with 'same' zero padding on a fixed input length, on (B, T, C)
    activations, by Winograd's minimal filtering F(4, k) (:mod:`~dp_gym.policies.diffusion.winograd`):
    each tile of 4 output positions costs k + 3 channel GEMMs' worth of multiplies instead of 4k
    (8 against 20 for the UNet's 5-tap convolutions). An axis of at most 4 positions that one tile
    with the roles swapped covers in fewer (``winograd_whole``: 7 at the UNet's deepest level,
    t = 4, k = 5) uses that instead: 3-14% faster trunk passes (``benchmarks/trunk_winograd.py``).
    Three matrix products: a constant matrix gathers and transforms every tile's input positions
    (padding included), one batched GEMM per transform point applies the transformed weights
    (n, C_in, C_out), a constant matrix takes the tiles back to positions. It pays from about 5
    samples per call: the transformed weights are (k + 3) / k times the plain ones' bytes and each
    GEMM has B * tiles rows, so at batch 1 the plain GEMM form is 2x faster."""

    tile = 4
    whole_axis_max = 4  # longest axis taken as one swapped tile (2t - 1 points; 7 keeps the float32 error near 1e-6)

    def __init__(self, conv: nn.Conv1d, t: int) -> None:
        super().__init__()
        if not _WinogradConv.supports(conv):
            raise ValueError(f"only stride-1, 3- or 5-tap, 'same'-padded plain Conv1d layers have a Winograd form, got {conv}")
        k, m = conv.kernel_size[0], self.tile
        self.tiles = -(-t // m)
        if whole_axis_pays(k, t, m, self.whole_axis_max):
            transform_in, transform_out, g = winograd_whole(k, t)
            self.n = 2 * t - 1
        else:
            transform_in, transform_out, g = winograd_tiling(m, k, t)
            self.n = m + k - 1
        self.c_out, self.c_in = conv.weight.shape[0], conv.weight.shape[1]
        weight = torch.einsum("aj,oij->aio", g, conv.weight.detach().double())  # (n, C_in, C_out)
        self.register_buffer("transform_in", transform_in.float())
        self.register_buffer("transform_out", transform_out.float())
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else torch.zeros(self.c_out))

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (isinstance(conv, nn.Conv1d) and conv.stride == (1,) and conv.groups == 1 and conv.dilation == (1,)
                and conv.padding_mode == "zeros" and conv.kernel_size[0] in (3, 5) and conv.padding == (conv.kernel_size[0] // 2,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C_in) → (B, T, C_out)
        v = torch.matmul(self.transform_in, x)  # (B, n * tiles, C_in)
        v = v.reshape(-1, self.n, self.tiles * self.c_in).transpose(0, 1).reshape(self.n, -1, self.c_in)
        h = torch.matmul(v, self.weight)  # (n, B * tiles, C_out)
        h = h.reshape(self.n, -1, self.tiles * self.c_out).transpose(0, 1).reshape(-1, self.n * self.tiles, self.c_out)
        return torch.matmul(self.transform_out, h) + self.bias


class _TimeMajorGroupNorm(nn.Module):
    """GroupNorm over (B, T, C) activations of a fixed length: statistics per (sample, group)
    over time and the group's channels, as the runtime's fused LayerNormalization over a
    (B, G, T, C/G) view (5-7% faster per trunk pass than the same statistics as separate
    reduce and elementwise nodes)."""

    def __init__(self, norm: nn.GroupNorm, t: int) -> None:
        super().__init__()
        self.groups, self.channels, self.t, self.eps = norm.num_groups, norm.num_channels, t, norm.eps
        self.register_buffer("weight", norm.weight.detach().clone())
        self.register_buffer("bias", norm.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_group = self.channels // self.groups
        h = x.reshape(-1, self.t, self.groups, per_group).transpose(1, 2)
        h = F.layer_norm(h, (self.t, per_group), eps=self.eps).transpose(1, 2)
        return h.reshape(-1, self.t, self.channels) * self.weight + self.bias


class _TimeMajorConvBlock(nn.Module):
    def __init__(self, block: nn.Sequential, t: int, winograd: bool = False) -> None:
        super().__init__()
        conv, norm, _ = block
        self.conv = _WinogradConv(conv, t) if winograd and _WinogradConv.supports(conv) else _TimeMajorConv(conv, t)
        self.norm, self.act = _TimeMajorGroupNorm(norm, t), _MishExp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class _TimeMajorResBlock(nn.Module):
    def __init__(self, block: nn.Module, t: int, winograd: bool = False) -> None:
        super().__init__()
        self.block1, self.block2 = (_TimeMajorConvBlock(b, t, winograd) for b in (block.block1, block.block2))
        self.residual = _TimeMajorConv(block.residual, t) if isinstance(block.residual, nn.Conv1d) else None

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        scale, bias = film.unsqueeze(1).chunk(2, dim=2)
        h = self.block2(scale * self.block1(x) + bias)
        return h + (self.residual(x) if self.residual is not None else x)


class _TimeMajorUnet(nn.Module):
    """:meth:`ConditionalUnet1D.denoise` for a fixed horizon with activations kept (B, T, C)
    throughout (the network's input layout): the same function in about half the runtime nodes
    of a plain export, and no transposes. With ``winograd`` the residual blocks' and the final
    block's convolutions are :class:`_WinogradConv` (the form for batches of
    ``WINOGRAD_MIN_BATCH`` and more)."""

    def __init__(self, unet: nn.Module, horizon: int, winograd: bool = False) -> None:
        super().__init__()
        t, w = horizon, winograd
        self.film_sizes = list(unet.film_sizes)
        self.down = nn.ModuleList()
        for res1, res2, down in unet.down:
            down = _TimeMajorConv(down, t) if isinstance(down, nn.Conv1d) else nn.Identity()  # the deepest level keeps t
            self.down.append(nn.ModuleList([_TimeMajorResBlock(res1, t, w), _TimeMajorResBlock(res2, t, w), down]))
            t = getattr(down, "t_out", t)
        self.mid = nn.ModuleList([_TimeMajorResBlock(res, t, w) for res in unet.mid])
        self.up = nn.ModuleList()
        for res1, res2, up in unet.up:
            self.up.append(nn.ModuleList([_TimeMajorResBlock(res1, t, w), _TimeMajorResBlock(res2, t, w), _TimeMajorConv(up, t)]))
            t = self.up[-1][2].t_out
        self.final = nn.Sequential(_TimeMajorConvBlock(unet.final[0], t, w), _TimeMajorConv(unet.final[1], t))

    def denoise(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        from dp_gym.policies.diffusion.unet import unet_trunk

        return unet_trunk(self, x, film, channel_dim=-1)


def _export_form(denoiser: nn.Module, x_shape: tuple[int, ...], winograd: bool = False) -> nn.Module:
    """The function ``denoiser.denoise`` computes on (B, *x_shape) samples, in ops the runtime
    runs faster: the UNet as :class:`_TimeMajorUnet` (its 'same' convolutions in Winograd form
    with ``winograd``); any other denoiser (the transformer) as a copy with every Mish as
    :class:`_MishExp`, ``winograd`` ignored."""
    from dp_gym.policies.diffusion.unet import ConditionalUnet1D

    if isinstance(denoiser, ConditionalUnet1D):
        return _TimeMajorUnet(denoiser, horizon=x_shape[0], winograd=winograd).eval()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Mish):
                setattr(module, name, _MishExp())
            else:
                swap(child)

    form = copy.deepcopy(denoiser)
    swap(form)
    return form


class _TrunkModule(nn.Module):
    """``denoiser.denoise`` as a module's forward, for export."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.denoiser.denoise(x, c)


class _CameraFeatures(nn.Module):
    """A camera encoder after its preprocessing (float (N, C, h, w) crops → (N, feature_dim)), for export."""

    def __init__(self, camera: nn.Module) -> None:
        super().__init__()
        self.camera = camera

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.camera.features(x)


class OnnxModel:
    """A module's forward run on CPU by ONNX Runtime or OpenVINO (``runtime``), its inputs named by ``sample_shapes``
    (name → per-sample shape, in argument order), every input and the output batched along dim 0.

    The model is exported once (TorchScript-based ``torch.onnx.export``, dynamic batch axis) and
    written atomically to ``cache_dir()/onnx/<key>.onnx``; later constructions (this process or
    another) load it. The key hashes every parameter and buffer, the architecture, the per-sample
    input shapes and the torch version, so changed weights export anew. Each batch size gets its
    own session with the batch dimension fixed, so the runtime folds every shape computation
    (ONNX Runtime 1.2-1.4x, OpenVINO 1.4x per small-UNet pass at batch 1 over one dynamic-batch
    model); the most recently used are kept up to ``ONNX_SESSIONS_BYTES`` of models. A model over
    ``ONNX_DYNAMIC_BATCH_BYTES`` gets one dynamic-batch session for all batch sizes (batch 0 in
    the session key).

    >>> layer = OnnxModel(torch.nn.Linear(3, 2), {"x": (3,)})
    >>> layer(torch.ones(4, 3)).shape
    torch.Size([4, 2])
    """

    _models: "OrderedDict[str, bytes]" = OrderedDict()  # in-process: key → ONNX bytes
    # (key, batch, threads, runtime, precision) → (session, model bytes)
    _sessions: "OrderedDict[tuple[str, int, int, str, str], tuple[Any, int]]" = OrderedDict()

    def __init__(self, module: nn.Module, sample_shapes: dict[str, tuple[int, ...]], runtime: str = "onnxruntime",
                 precision: str = "f32") -> None:
        if runtime not in RUNTIMES.values():
            raise ValueError(f"runtime must be one of {tuple(RUNTIMES.values())}, got {runtime!r}")
        if precision not in PRECISIONS[runtime]:
            raise ValueError(f"{runtime} runs in precision {' or '.join(PRECISIONS[runtime])}, got {precision!r}")
        self.runtime = runtime
        self.precision = precision
        self.input_names = list(sample_shapes)
        self.key = self.cache_key(module, sample_shapes)
        self.path = cache_dir() / "onnx" / f"{self.key}.onnx"
        self.exported = False  # True when this construction exported (cache miss)
        if self.key not in self._models:
            self._models[self.key] = self._load_or_export(module, sample_shapes)
            while len(self._models) > 4:
                self._models.popitem(last=False)
        self.model = self._models[self.key]

    @staticmethod
    def cache_key(module: nn.Module, sample_shapes: dict[str, tuple[int, ...]]) -> str:
        """The exported model's name: a hash of what the export depends on (not of the runtime
        that reads it: the file is the same for both)."""
        h = hashlib.sha256()
        h.update(repr((ONNX_EXPORT_VERSION, torch.__version__, type(module).__qualname__, repr(module),
                       [(k, tuple(v)) for k, v in sample_shapes.items()])).encode())
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            t = t.detach().cpu().contiguous()
            h.update(repr((name, tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().tobytes() if t.dtype == torch.bool else t.view(torch.uint8).numpy().data)
        return h.hexdigest()[:32]

    def _load_or_export(self, module: nn.Module, sample_shapes: dict[str, tuple[int, ...]]) -> bytes:
        if self.path.is_file():
            try:
                model = self.path.read_bytes()
                import onnx

                onnx.checker.check_model(onnx.load_model_from_string(model))  # a whole, valid model
                os.utime(self.path)  # most recently used
                return model
            except Exception as e:  # noqa: BLE001 - unreadable cache entry: export again
                warnings.warn(f"ignoring unreadable cached model {self.path}: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=4)
        model = self.export(module, sample_shapes)
        self.exported = True
        try:
            from dp_gym.checkpoint import atomic_write_bytes

            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, model)
            old = sorted(self.path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)[ONNX_CACHE_KEEP:]
            for p in old:
                p.unlink(missing_ok=True)
        except OSError as e:  # a read-only cache only costs the next process an export
            warnings.warn(f"could not cache the exported model in {self.path.parent}: {e}", RuntimeWarning, stacklevel=4)
        return model

    @staticmethod
    def _session(model: bytes, batch: int, threads: int, runtime: str, precision: str):
        """A callable session for one batch size, or every batch size for ``batch`` 0:
        ``run(None, {name: array}) -> [output]``."""
        if runtime == "openvino":
            return _OpenVinoSession(model, batch, threads, precision)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if batch:
            so.add_free_dimension_override_by_name("batch", batch)
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    @staticmethod
    def export(module: nn.Module, sample_shapes: dict[str, tuple[int, ...]]) -> bytes:
        """ONNX bytes of ``module``'s forward (eval mode, float32) with a dynamic batch axis."""
        modes = [(m, m.training) for m in module.modules()]  # restored one by one: it may wrap a live policy's modules
        mha_fastpath = torch.backends.mha.get_fastpath_enabled()
        f = io.BytesIO()
        names = list(sample_shapes)
        try:
            module.eval()
            torch.backends.mha.set_fastpath_enabled(False)  # its fused attention op has no ONNX export
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer / deprecation chatter
                args = tuple(torch.zeros(2, *sample_shapes[k]) for k in names)
                torch.onnx.export(module, args, f, dynamo=False, input_names=names, output_names=["out"],
                                  dynamic_axes={k: {0: "batch"} for k in [*names, "out"]}, opset_version=18)
        finally:
            for m, training in modes:
                m.training = training
            torch.backends.mha.set_fastpath_enabled(mha_fastpath)
        return f.getvalue()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = inputs[0].shape[0] if len(self.model) <= ONNX_DYNAMIC_BATCH_BYTES else 0  # 0: dynamic
        key = (self.key, batch, torch.get_num_threads(), self.runtime, self.precision)
        entry = self._sessions.get(key)
        if entry is None:
            entry = self._sessions[key] = (self._session(self.model, *key[1:]), len(self.model))
            while len(self._sessions) > 1 and sum(n for _, n in self._sessions.values()) > ONNX_SESSIONS_BYTES:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(key)
        session = entry[0]
        out = session.run(None, {k: t.contiguous().numpy() for k, t in zip(self.input_names, inputs)})[0]
        return torch.from_numpy(out)


class _OpenVinoSession:
    """An ONNX model compiled by OpenVINO's CPU plugin for one batch size (every size for ``batch``
    0, where the model's batch axis is dynamic), with the interface of an
    ONNX Runtime session's ``run``; ``model`` is ONNX bytes or a model OpenVINO has already read.
    The inference ``precision`` ("f32" | "bf16") is asked for explicitly (on CPUs with bf16 units
    the plugin would otherwise choose bf16); a CPU without them runs "bf16" in float32, which
    :attr:`precision` then says. ``threads`` inference threads, one stream."""

    _core: Any = None  # one openvino.Core per process

    def __init__(self, model: Any, batch: int, threads: int, precision: str = "f32") -> None:
        import openvino as ov

        if _OpenVinoSession._core is None:
            _OpenVinoSession._core = ov.Core()
        net = self._core.read_model(io.BytesIO(model)) if isinstance(model, bytes) else model
        if batch:  # else the batch axis stays dynamic
            net.reshape({i.get_any_name(): [batch, *(d.get_length() for d in list(i.get_partial_shape())[1:])] for i in net.inputs})
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        compiled = self._core.compile_model(net, "CPU", config)
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what the plugin chose
        self._request = compiled.create_infer_request()

    def run(self, _output_names: Any, feeds: dict[str, Any]) -> list[Any]:
        # share_inputs: the request reads the (contiguous float32) arrays in place instead of
        # converting them (~50 µs per call, 5% of a small-UNet trunk pass at batch 1).
        self._request.infer(feeds, share_inputs=True)
        return [self._request.get_output_tensor(0).data.copy()]  # the request reuses its output buffer


class OnnxTrunk(OnnxModel):
    """A denoiser's trunk (:meth:`denoise`) in an ONNX runtime, exported in its faster form
    (:func:`_export_form`; a UNet's 'same' convolutions in Winograd form with ``winograd``); the
    sampler settings are not part of the model, the scheduler runs outside the graph."""

    def __init__(self, denoiser: nn.Module, x_shape: tuple[int, ...], c_shape: tuple[int, ...], runtime: str = "onnxruntime",
                 precision: str = "f32", winograd: bool = False) -> None:
        super().__init__(_TrunkModule(_export_form(denoiser, tuple(x_shape), winograd)), {"x": tuple(x_shape), "c": tuple(c_shape)},
                         runtime, precision)
        self.winograd = winograd


class SamplingAccelerator:
    """Runs a policy's denoising loop in ``mode`` ("eager" | "compile" | "cuda_graph" | "onnx" |
    "openvino") with optional ``autocast`` ("no" | "bf16" | "fp16"; with the runtimes "no", or
    "bf16" for OpenVINO's bfloat16 inference, :attr:`runtime_precision`).
    CUDA graphs are captured once per batch size (static input buffers, warm-up on a side stream);
    ``compile`` uses ``reduce-overhead`` on CUDA; ``onnx`` / ``openvino`` export (or load from the
    cache) at the first call, for the weights the policy has then: build a new accelerator after changing them.
    :attr:`active_mode` says what actually runs."""

    def __init__(self, policy: nn.Module, mode: str = "eager", autocast: str = "no", sampler: str | None = None,
                 num_inference_steps: int | None = None, compile_kwargs: dict[str, Any] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {tuple(AUTOCAST_DTYPES)}, got {autocast!r}")
        c = policy.config
        self.sampler = sampler or c.sampler
        self.num_inference_steps = num_inference_steps or c.num_inference_steps
        self.loop = DenoisingLoop(policy.denoiser, policy.scheduler, self.sampler, self.num_inference_steps)
        self.device = next(policy.parameters()).device
        self.autocast_dtype = AUTOCAST_DTYPES[autocast]
        self.requested_mode = mode
        self.active_mode = mode
        self.fallback_reason: str | None = None
        self._compiled: Callable | None = None
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._compile_kwargs = compile_kwargs or {}
        if mode in RUNTIMES and autocast not in runtime_autocasts(mode):
            raise ValueError(f"the {mode} mode runs in {' or '.join(PRECISIONS[RUNTIMES[mode]])}; autocast must be "
                             f"{' or '.join(map(repr, runtime_autocasts(mode)))}, got {autocast!r}")
        # the precision the runtime modes are asked for; a fallback to ONNX Runtime runs float32
        self.runtime_precision = "f32" if autocast == "no" else autocast
        self.onnx_trunk: OnnxTrunk | None = None  # the trunk of the latest runtime call
        self._onnx_trunks: dict[bool, OnnxTrunk] = {}  # keyed by whether it is the Winograd form
        self.onnx_cameras: dict[str, OnnxModel] = {}
        if mode == "cuda_graph" and self.device.type != "cuda":
            self._fall_back(f"CUDA graphs need a CUDA device, the policy is on {self.device}")
        elif mode in RUNTIMES and self.device.type != "cpu":
            self._fall_back(f"the {mode} mode runs on CPU, the policy is on {self.device}", to="eager")
        elif mode in RUNTIMES and (missing := _importable(RUNTIMES[mode])):
            self._fall_back(missing)
        elif mode == "compile":
            try:
                kw = {"mode": "reduce-overhead" if self.device.type == "cuda" else "default", "dynamic": False}
                kw.update(self._compile_kwargs)
                self._compiled = torch.compile(self.loop, **kw)
            except Exception as e:  # noqa: BLE001 - any failure to set up compile means eager
                self._fall_back(f"torch.compile unavailable: {type(e).__name__}: {e}")

    def _fall_back(self, reason: str, to: str | None = None) -> None:
        """Run mode ``to`` instead, by default the next one down (OpenVINO → ONNX Runtime when that
        imports; anything else → eager), keeping the reason and warning once."""
        if to is None:
            to = "onnx" if self.active_mode == "openvino" and _importable("onnxruntime") is None else "eager"
        if to == "onnx" and self.runtime_precision != "f32":
            reason += f" (ONNX Runtime runs float32, not {self.runtime_precision})"
            self.runtime_precision = "f32"
        self.active_mode, self.fallback_reason = to, reason
        self.onnx_trunk, self._onnx_trunks, self.onnx_cameras = None, {}, {}
        warnings.warn(f"sampling accelerator '{self.requested_mode}' falls back to {to}: {reason}", RuntimeWarning, stacklevel=3)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def encode_obs(self, policy: nn.Module, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``policy.encode_obs(obs)`` the way this accelerator runs: in the runtime modes each
        camera's network (after its preprocessing) runs in the runtime, exported at the first call
        for the weights the policy has then; otherwise under the accelerator's autocast."""
        while self.active_mode in RUNTIMES and policy.image_encoder is not None:  # each failure moves one mode down
            try:
                if not self.onnx_cameras:
                    for key, cam in policy.image_encoder.cameras.items():
                        h, w = cam.crop_shape
                        self.onnx_cameras[key] = OnnxModel(_CameraFeatures(cam), {"x": (cam.image_shape[2], h, w)}, RUNTIMES[self.active_mode],
                                                           self.runtime_precision)
                return policy.encode_obs(obs, camera_features=lambda key, x: self.onnx_cameras[key](x))
            except Exception as e:  # noqa: BLE001 - e.g. an op the exporter or runtime does not support
                self._fall_back(f"ONNX export or run of the image encoder failed ({RUNTIMES[self.active_mode]}): "
                                f"{type(e).__name__}: {str(e)[:200]}")
        with self.autocast():
            return policy.encode_obs(obs)

    def winograd_for(self, batch: int) -> bool:
        """Whether a UNet's trunk runs in its Winograd form at this batch size (from
        ``WINOGRAD_MIN_BATCH`` samples, ``WINOGRAD_MIN_BATCH_LARGE`` for a UNet over
        ``ONNX_DYNAMIC_BATCH_BYTES``): in OpenVINO in float32 only (ONNX Runtime runs that form 0.7x slower than the plain one at batch 10;
        bfloat16 keeps the plain form its measurements were made with)."""
        from dp_gym.policies.diffusion.unet import ConditionalUnet1D

        if not (self.active_mode == "openvino" and self.runtime_precision == "f32" and isinstance(self.loop.denoiser, ConditionalUnet1D)):
            return False
        return batch >= (WINOGRAD_MIN_BATCH_LARGE if self._denoiser_bytes > ONNX_DYNAMIC_BATCH_BYTES else WINOGRAD_MIN_BATCH)

    @functools.cached_property
    def _denoiser_bytes(self) -> int:
        """The denoiser's parameter bytes (it is fixed for the accelerator's life; summed once, not per chunk)."""
        return sum(p.numel() * p.element_size() for p in self.loop.denoiser.parameters())

    def matches(self, sampler: str, num_inference_steps: int) -> bool:
        return sampler == self.sampler and num_inference_steps == self.num_inference_steps

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        while self.active_mode in RUNTIMES:  # each failure moves one mode down
            try:
                winograd = self.winograd_for(noise.shape[0])
                if winograd not in self._onnx_trunks:
                    c = self.loop.denoiser.condition(self.loop.step_ids[:1], cond[:1])
                    self._onnx_trunks[winograd] = OnnxTrunk(self.loop.denoiser, tuple(noise.shape[2:]), tuple(c.shape[1:]),
                                                            RUNTIMES[self.active_mode], self.runtime_precision, winograd)
                self.onnx_trunk = self.loop.trunk = self._onnx_trunks[winograd]
                return self.loop(cond, noise).float()
            except Exception as e:  # noqa: BLE001 - e.g. an op the exporter or runtime does not support
                self._fall_back(f"ONNX export or run failed ({RUNTIMES[self.active_mode]}): {type(e).__name__}: {str(e)[:200]}")
            finally:
                self.loop.trunk = None
        if self.active_mode == "compile" and self._compiled is not None:
            try:
                with self.autocast():
                    return self._compiled(cond, noise).float()
            except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler for inductor on this machine
                self._fall_back(f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}")
        if self.active_mode == "cuda_graph":
            try:
                return self._graph_call(cond, noise)
            except Exception as e:  # noqa: BLE001
                self._fall_back(f"CUDA graph capture failed: {type(e).__name__}: {str(e)[:200]}")
        with self.autocast():
            return self.loop(cond, noise).float()

    def _graph_call(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        key = (tuple(cond.shape), tuple(noise.shape), cond.dtype)
        if key not in self._graphs:
            static_cond, static_noise = cond.clone(), noise.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), self.autocast():
                for _ in range(2):  # warm-up (cuDNN/cuBLAS workspace allocation) outside the graph
                    self.loop(static_cond, static_noise)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), self.autocast():
                static_out = self.loop(static_cond, static_noise).float()
            self._graphs[key] = (graph, static_cond, static_noise, static_out)
        graph, static_cond, static_noise, static_out = self._graphs[key]
        static_cond.copy_(cond)
        static_noise.copy_(noise)
        graph.replay()
        return static_out.clone()
