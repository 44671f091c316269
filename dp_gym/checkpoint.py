"""Checkpoints: safetensors for tensors, JSON for everything else. Never pickle.

A policy checkpoint is a directory with ``model.safetensors`` (weights, including normaliser
buffers; the JSON description is also embedded in the safetensors header so one file is
self-describing) and ``config.json`` (the same description, for people). Every file is written to a
temporary name in the same directory and then ``os.replace``d, so a kill never leaves a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from safetensors import SafetensorError, safe_open

FORMAT_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)
META_KEY = "dp_gym"


def atomic_write(path: Path, write: Callable[[str], None], keep_suffix: bool = False) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it
    over ``path``: readers see the old file or the new one, never a torn one. ``keep_suffix``
    ends the temporary name with ``path``'s suffix too (``.x.mp4.<random>.tmp.mp4``), for writers
    that pick the format from the file name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + (path.suffix if keep_suffix else ""))
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(root: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp[<suffix>]``) that :func:`atomic_write`
    calls interrupted by a kill left under ``root``; call it only while no writer is active there.
    Returns the removed paths."""
    removed = []
    for tmp in sorted({*Path(root).rglob(".*.tmp"), *Path(root).rglob(".*.tmp.*")}):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta or {})}))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(META_KEY, "{}")
    return load_file(str(path), device=str(device)), json.loads(raw)


def save_policy(policy: torch.nn.Module, directory: str | Path, extra: dict[str, Any] | None = None, state_dict: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` for ``policy`` into ``directory``."""
    directory = Path(directory)
    import dp_gym

    meta = {
        "format_version": FORMAT_VERSION,
        "policy_type": policy.policy_type,
        "policy_config": policy.config.to_dict(),
        "versions": {"dp_gym": dp_gym.__version__, "torch": torch.__version__},
        **(extra or {}),
    }
    sd = state_dict if state_dict is not None else policy.state_dict()
    atomic_save_tensors(directory / "model.safetensors", sd, meta)
    atomic_write_json(directory / "config.json", meta)
    return directory


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, of another format, an invalid embedded config,
    or non-finite weights. The message names the file and what is wrong."""


def load_policy(directory: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a policy from a checkpoint directory (or its model.safetensors), or from a model-zoo
    entry named ``zoo:<task>/<policy>`` (see :mod:`dp_gym.zoo`). Weights stored in half precision
    load into the policy's float32 parameters.

    The embedded config is validated (types, bounds) before anything is allocated, and every
    floating-point tensor must be finite; otherwise :class:`CheckpointError` names the problem."""
    from dp_gym.policies import make_policy, policy_classes
    from dp_gym.zoo import resolve

    directory = resolve(directory)
    file = directory if directory.suffix == ".safetensors" else directory / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {file} (expected a checkpoint directory holding model.safetensors)")
    try:
        tensors, meta = load_tensors(file, "cpu")
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # torn or foreign files
        raise CheckpointError(f"{file}: not a readable safetensors checkpoint ({e})") from e
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(f"{file}: unsupported checkpoint format_version {version!r} (expected {FORMAT_VERSION})")
    policy_type, policy_config = meta.get("policy_type"), meta.get("policy_config")
    if policy_type not in policy_classes():
        raise CheckpointError(f"{file}: unknown policy_type {policy_type!r}; expected one of {sorted(policy_classes())}")
    if not isinstance(policy_config, dict):
        raise CheckpointError(f"{file}: policy_config must be a JSON object, got {type(policy_config).__name__}")
    config_cls = policy_classes()[policy_type][1]
    try:
        config = config_cls.from_dict(policy_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: invalid policy config: {e}") from e
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{file}: non-finite (NaN or inf) values in {len(bad)} tensor(s), e.g. {bad[:3]}")
    policy = make_policy(policy_type, config)
    try:
        policy.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{file}: weights do not match the embedded config: {e}") from e
    policy = policy.to(device)
    policy.eval()
    return policy, meta
