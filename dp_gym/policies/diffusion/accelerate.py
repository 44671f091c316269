"""Faster sampling for :class:`DiffusionPolicy` without changing what it computes.

The whole K-step denoising loop is one module call (:class:`DenoisingLoop`), so it can be compiled
(``torch.compile``) or captured as one CUDA graph and replayed: on a GPU the eager loop is bound by
kernel-launch overhead (tens of small kernels per step), which capture removes. Optionally the
encoder and loop run under bf16/fp16 autocast. Every accelerated mode falls back to the eager loop
(with the reason in :attr:`SamplingAccelerator.fallback_reason`) when it is unavailable or fails,
so the same code runs on CPU-only machines.

>>> acc = SamplingAccelerator(policy, mode="cuda_graph", sampler="ddim", num_inference_steps=10)
>>> actions = policy.sample_actions(obs, noise=noise, accelerator=acc)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

MODES = ("eager", "compile", "cuda_graph")
AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DenoisingLoop(nn.Module):
    """x_T (noise[:, 0]) → x_0 in normalised action space, all steps in one call, no host syncs:
    timesteps are Python ints fixed at construction and every constant is a device buffer."""

    def __init__(self, denoiser: nn.Module, scheduler: nn.Module, sampler: str, num_inference_steps: int) -> None:
        super().__init__()
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        self.denoiser = denoiser
        self.scheduler = scheduler
        self.sampler = sampler
        self.timesteps = scheduler.timesteps(num_inference_steps)

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ts = self.timesteps
        x = noise[:, 0]
        t_batch = torch.empty(x.shape[0], device=x.device, dtype=torch.long)
        for i, t in enumerate(ts):
            prev_t = ts[i + 1] if i + 1 < len(ts) else -1
            out = self.denoiser(x, t_batch.fill_(t), cond)  # ε or x̂₀, per the scheduler's prediction_type
            if self.sampler == "ddim":
                x = self.scheduler.ddim_step(out, t, x, prev_t)
            else:
                x = self.scheduler.ddpm_step(out, t, x, noise[:, i + 1] if prev_t >= 0 else None, prev_t)
        return x


class SamplingAccelerator:
    """Runs a policy's denoising loop in ``mode`` ("eager" | "compile" | "cuda_graph") with
    optional ``autocast`` ("no" | "bf16" | "fp16"). CUDA graphs are captured once per batch size
    (static input buffers, warm-up on a side stream); ``compile`` uses ``reduce-overhead`` on CUDA.
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
        if mode == "cuda_graph" and self.device.type != "cuda":
            self._fall_back(f"CUDA graphs need a CUDA device, the policy is on {self.device}")
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
