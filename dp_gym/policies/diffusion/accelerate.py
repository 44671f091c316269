"""Faster sampling for :class:`DiffusionPolicy` without changing what it computes.

The whole K-step denoising loop is one module call (:class:`DenoisingLoop`). The denoiser's
conditioning (diffusion-step embedding, FiLM scale/bias or the transformer's memory) depends only
on (step, observation), so the loop computes it for all K steps in one batched call and then runs
only the denoiser's trunk per step. Modes:

* ``"onnx"`` (the CPU default of :class:`~dp_gym.agent.PolicyAgent`): the trunk runs in ONNX
  Runtime, exported with its convolutions as one GEMM over (batch x positions) rows, where PyTorch
  runs these small 1-D convolutions through its im2col fallback one sample at a time (1.5-1.9x
  per chunk on the CPU of ``benchmarks/results/perf_cpu``); the scheduler steps stay in PyTorch.
  The trunk is exported at first use (about a second for the small UNet) and cached on disk (see
  :func:`cache_dir`), keyed by a hash of weights, architecture, input shape and library versions;
* ``"compile"`` (``torch.compile``) and ``"cuda_graph"`` (the loop captured as one CUDA graph and
  replayed: on a GPU the eager loop is bound by kernel-launch overhead);
* ``"eager"``: plain PyTorch, the reference.

Optionally the encoder and loop run under bf16/fp16 autocast (not with ``"onnx"``). Every
accelerated mode falls back to the eager loop (with the reason in
:attr:`SamplingAccelerator.fallback_reason` and a one-line warning) when it is unavailable or
fails, so the same code runs everywhere. ``$DP_GYM_ACCELERATE`` overrides the agent's default mode
(e.g. ``DP_GYM_ACCELERATE=eager``).

>>> acc = SamplingAccelerator(policy, mode="onnx", sampler="ddim", num_inference_steps=10)
>>> actions = policy.sample_actions(obs, noise=noise, accelerator=acc)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("eager", "compile", "cuda_graph", "onnx")
AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ACCELERATE_ENV = "DP_GYM_ACCELERATE"
CACHE_ENV = "DP_GYM_CACHE_DIR"
ONNX_EXPORT_VERSION = 1  # bump when the exported graph's inputs/outputs change
ONNX_CACHE_KEEP = 16  # exported models kept on disk (least recently used removed first)


def default_mode(device: torch.device | str) -> str:
    """The sampling mode an agent uses unless told otherwise: ``$DP_GYM_ACCELERATE`` when set,
    else ``"onnx"`` on CPU and ``"eager"`` elsewhere."""
    env = os.environ.get(ACCELERATE_ENV, "").strip()
    if env:
        if env not in MODES:
            raise ValueError(f"${ACCELERATE_ENV} must be one of {MODES}, got {env!r}")
        return env
    return "onnx" if torch.device(device).type == "cpu" else "eager"


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


class _Conv1dAsMatMul(nn.Module):
    """A Conv1d as one matrix product over (batch x output position) rows: the k shifted input
    windows are concatenated along channels. The runtime's convolution processes each batch
    element separately with skinny (C x T) matrices; this gives it one larger GEMM instead."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        out_ch, in_ch, k = conv.weight.shape
        self.k, self.pad, self.stride = k, conv.padding[0], conv.stride[0]
        # row j*in_ch + c of the (k*in_ch, out_ch) matrix is tap j of input channel c
        self.register_buffer("weight", conv.weight.detach().permute(2, 1, 0).reshape(k * in_ch, out_ch).contiguous())
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else torch.zeros(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) → (B, O, T_out)
        k, p, s = self.k, self.pad, self.stride
        t_out = (x.shape[-1] + 2 * p - k) // s + 1
        xp = (F.pad(x, (p, p)) if p else x).transpose(1, 2)
        cols = torch.cat([xp[:, j : j + s * (t_out - 1) + 1 : s] for j in range(k)], dim=2) if (k, s) != (1, 1) else xp
        return (torch.matmul(cols, self.weight) + self.bias).transpose(1, 2)


class _MishExp(nn.Module):
    """Mish as x * n / (n + 2) with n = e^x (e^x + 2), i.e. tanh(softplus(x)) in closed form: the
    runtime's Softplus and Tanh kernels are several times slower than one Exp. x is capped at 20
    inside the exponential, where the ratio is 1 in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(torch.clamp(x, max=20.0))
        n = e * (e + 2)
        return x * n / (n + 2)


def _export_form(denoiser: nn.Module) -> nn.Module:
    """A copy of ``denoiser`` with every plain Conv1d as :class:`_Conv1dAsMatMul` and every Mish
    as :class:`_MishExp`: the same function, in ops the runtime runs faster."""

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Conv1d) and child.groups == 1 and child.dilation == (1,) and child.padding_mode == "zeros" \
                    and isinstance(child.padding, tuple):
                setattr(module, name, _Conv1dAsMatMul(child))
            elif isinstance(child, nn.Mish):
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


class OnnxTrunk:
    """A denoiser's trunk (:meth:`denoise`) run by ONNX Runtime on CPU.

    The model is exported once (TorchScript-based ``torch.onnx.export``, dynamic batch axis) and
    written atomically to ``cache_dir()/onnx/<key>.onnx``; later constructions (this process or
    another) load it. The key hashes every parameter and buffer, the architecture, the per-sample
    input shapes and the torch / onnxruntime versions, so changed weights export anew; the sampler
    settings are not part of it, the scheduler runs outside the graph. Batch 1 (one env, the
    latency case) gets its own session with the batch fixed, so the runtime folds every shape
    computation (~15% faster there); every other batch size shares one dynamic-batch session, so
    memory stays at two sessions per model whatever batch sizes an agent's replans produce."""

    _models: "OrderedDict[str, bytes]" = OrderedDict()  # in-process: key → ONNX bytes
    _sessions: "OrderedDict[tuple[str, int | None, int], Any]" = OrderedDict()  # (key, 1 or None, threads) → session

    def __init__(self, denoiser: nn.Module, x_shape: tuple[int, ...], c_shape: tuple[int, ...]) -> None:
        import onnxruntime as ort

        self.key = self.cache_key(denoiser, x_shape, c_shape, ort.__version__)
        self.path = cache_dir() / "onnx" / f"{self.key}.onnx"
        self.exported = False  # True when this construction exported (cache miss)
        if self.key not in self._models:
            self._models[self.key] = self._load_or_export(denoiser, x_shape, c_shape)
            while len(self._models) > 2:
                self._models.popitem(last=False)
        self.model = self._models[self.key]

    @staticmethod
    def cache_key(denoiser: nn.Module, x_shape: tuple[int, ...], c_shape: tuple[int, ...], ort_version: str) -> str:
        h = hashlib.sha256()
        h.update(repr((ONNX_EXPORT_VERSION, torch.__version__, ort_version, type(denoiser).__qualname__, repr(denoiser),
                       tuple(x_shape), tuple(c_shape))).encode())
        for name, t in [*denoiser.named_parameters(), *denoiser.named_buffers()]:
            t = t.detach().cpu().contiguous()
            h.update(repr((name, tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().tobytes() if t.dtype == torch.bool else t.view(torch.uint8).numpy().data)
        return h.hexdigest()[:32]

    def _load_or_export(self, denoiser: nn.Module, x_shape, c_shape) -> bytes:
        if self.path.is_file():
            try:
                model = self.path.read_bytes()
                self._session(model, None, 1)  # validates the file
                os.utime(self.path)  # most recently used
                return model
            except Exception as e:  # noqa: BLE001 - unreadable cache entry: export again
                warnings.warn(f"ignoring unreadable cached model {self.path}: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=4)
        model = self.export(denoiser, x_shape, c_shape)
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
    def _session(model: bytes, batch: int | None, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if batch is not None:
            so.add_free_dimension_override_by_name("batch", batch)
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    @staticmethod
    def export(denoiser: nn.Module, x_shape: tuple[int, ...], c_shape: tuple[int, ...]) -> bytes:
        """ONNX bytes of ``denoiser.denoise`` (eval mode, float32) with a dynamic batch axis."""
        was_training = denoiser.training
        mha_fastpath = torch.backends.mha.get_fastpath_enabled()
        f = io.BytesIO()
        try:
            denoiser.eval()
            torch.backends.mha.set_fastpath_enabled(False)  # its fused attention op has no ONNX export
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer / deprecation chatter
                x = torch.zeros(2, *x_shape)
                c = torch.zeros(2, *c_shape)
                torch.onnx.export(_TrunkModule(_export_form(denoiser)), (x, c), f, dynamo=False, input_names=["x", "c"],
                                  output_names=["out"], dynamic_axes={"x": {0: "batch"}, "c": {0: "batch"}, "out": {0: "batch"}},
                                  opset_version=18)
        finally:
            denoiser.train(was_training)
            torch.backends.mha.set_fastpath_enabled(mha_fastpath)
        return f.getvalue()

    def __call__(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        key = (self.key, 1 if x.shape[0] == 1 else None, torch.get_num_threads())
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self._session(self.model, key[1], key[2])
            while len(self._sessions) > 4:
                self._sessions.popitem(last=False)
        out = session.run(None, {"x": x.contiguous().numpy(), "c": c.contiguous().numpy()})[0]
        return torch.from_numpy(out)


class SamplingAccelerator:
    """Runs a policy's denoising loop in ``mode`` ("eager" | "compile" | "cuda_graph" | "onnx")
    with optional ``autocast`` ("no" | "bf16" | "fp16"; "no" only with "onnx"). CUDA graphs are
    captured once per batch size (static input buffers, warm-up on a side stream); ``compile``
    uses ``reduce-overhead`` on CUDA; ``onnx`` exports (or loads from the cache) at the first
    call, for the weights the policy has then: build a new accelerator after changing them.
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
        if mode == "onnx" and autocast != "no":
            raise ValueError(f"the onnx mode runs float32; autocast must be 'no', got {autocast!r}")
        self.onnx_trunk: OnnxTrunk | None = None
        if mode == "cuda_graph" and self.device.type != "cuda":
            self._fall_back(f"CUDA graphs need a CUDA device, the policy is on {self.device}")
        elif mode == "onnx" and self.device.type != "cpu":
            self._fall_back(f"the onnx mode runs on CPU, the policy is on {self.device}")
        elif mode == "onnx":
            try:
                import onnxruntime  # noqa: F401
            except ImportError as e:
                self._fall_back(f"onnxruntime is not installed ({e})")
        elif mode == "compile":
            try:
                kw = {"mode": "reduce-overhead" if self.device.type == "cuda" else "default", "dynamic": False}
                kw.update(self._compile_kwargs)
                self._compiled = torch.compile(self.loop, **kw)
            except Exception as e:  # noqa: BLE001 - any failure to set up compile means eager
                self._fall_back(f"torch.compile unavailable: {type(e).__name__}: {e}")

    def _fall_back(self, reason: str) -> None:
        self.active_mode, self.fallback_reason = "eager", reason
        warnings.warn(f"sampling accelerator '{self.requested_mode}' falls back to eager: {reason}", RuntimeWarning, stacklevel=3)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def matches(self, sampler: str, num_inference_steps: int) -> bool:
        return sampler == self.sampler and num_inference_steps == self.num_inference_steps

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.active_mode == "onnx":
            try:
                if self.onnx_trunk is None:
                    c = self.loop.denoiser.condition(self.loop.step_ids[:1], cond[:1])
                    self.onnx_trunk = OnnxTrunk(self.loop.denoiser, tuple(noise.shape[2:]), tuple(c.shape[1:]))
                self.loop.trunk = self.onnx_trunk
                return self.loop(cond, noise).float()
            except Exception as e:  # noqa: BLE001 - e.g. an op the exporter or runtime does not support
                self._fall_back(f"ONNX export or run failed: {type(e).__name__}: {str(e)[:200]}")
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
