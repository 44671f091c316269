"""What a measurement ran on, recorded beside every benchmark and perf result.

Scores and timings depend on it: the sampling runtime picks its kernels by CPU, so float rounding,
and with it a contact-rich episode's outcome, can differ between CPU models and library builds
(the same command on the same machine gives the same episodes).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# Libraries whose builds change results: the sampling runtimes and the simulators.
RESULT_LIBRARIES = ("numpy", "openvino", "onnxruntime", "mujoco", "robosuite", "pymunk", "gymnasium")


def _cpuinfo() -> str:
    """``/proc/cpuinfo``'s text; empty where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# Instruction sets a CPU runs bfloat16 arithmetic with (names as /proc/cpuinfo gives them).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bfloat16 instruction sets (:data:`BF16_CPU_FLAGS`) among the CPU's flags, read from
    ``cpuinfo`` (``/proc/cpuinfo``'s text; read from the file when None). Empty where the file
    is missing (not Linux) or names none.

    Example:
        >>> cpu_bf16_flags("flags\t\t: fpu avx512f avx512_bf16 sse2")
        ['avx512_bf16']
    """
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [f for f in BF16_CPU_FLAGS if f in flags]
    return []


def machine_description(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Platform, CPU model, its bfloat16 instruction sets and count, torch and its threads, the
    device, and the installed versions of :data:`RESULT_LIBRARIES`.

    Example:
        >>> machine_description("cpu")["torch"] == torch.__version__
        True
    """
    device = torch.device(device)
    libraries = {}
    for name in RESULT_LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    desc = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu_model(), "cpu_bf16": cpu_bf16_flags(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device), "libraries": libraries}
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
    return desc
