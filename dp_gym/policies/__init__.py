"""Policy registry: name → (policy class, config class). Every policy exposes ``config``,
``policy_type``, ``fit_normalizers``, ``compute_loss`` and ``predict_chunk``."""

from __future__ import annotations

from typing import Any


def policy_classes() -> dict[str, tuple[type, type]]:
    from dp_gym.policies.diffusion.config import DiffusionConfig
    from dp_gym.policies.diffusion.policy import DiffusionPolicy

    return {"diffusion": (DiffusionPolicy, DiffusionConfig)}


def make_policy(policy_type: str, config: dict[str, Any] | Any):
    classes = policy_classes()
    if policy_type not in classes:
        raise ValueError(f"unknown policy type {policy_type!r}; available: {sorted(classes)}")
    policy_cls, config_cls = classes[policy_type]
    if isinstance(config, dict):
        config = config_cls.from_dict(config)
    return policy_cls(config)
