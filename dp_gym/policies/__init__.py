"""Policy registry: name → (policy class, config class). Every policy exposes ``config``,
``policy_type``, ``fit_normalizers``, ``compute_loss`` and ``predict_chunk``; stochastic ones also
``noise_shape`` (the per-sample standard normals ``predict_chunk(noise=...)`` consumes).

* ``diffusion``: Diffusion Policy (Chi et al., RSS 2023).
* ``bc``: explicit behaviour cloning, MLP + MSE (single-step or chunked).
* ``ibc``: implicit behaviour cloning (Florence et al., CoRL 2021), energy MLP + InfoNCE + DFO.
"""

from __future__ import annotations

from typing import Any


def policy_classes() -> dict[str, tuple[type, type]]:
    from dp_gym.policies.bc.config import BCConfig
    from dp_gym.policies.bc.policy import BCPolicy
    from dp_gym.policies.diffusion.config import DiffusionConfig
    from dp_gym.policies.diffusion.policy import DiffusionPolicy
    from dp_gym.policies.ibc.config import IBCConfig
    from dp_gym.policies.ibc.policy import IBCPolicy

    return {
        "diffusion": (DiffusionPolicy, DiffusionConfig),
        "bc": (BCPolicy, BCConfig),
        "ibc": (IBCPolicy, IBCConfig),
    }


def model_sizes(policy_type: str) -> dict[str, dict[str, Any]]:
    """Named size presets (``--model-size``) of a policy type: size name → config overrides."""
    if policy_type == "diffusion":
        from dp_gym.policies.diffusion.config import MODEL_SIZES
    elif policy_type in ("bc", "ibc"):
        from dp_gym.policies.common import MLP_MODEL_SIZES as MODEL_SIZES
    else:
        raise ValueError(f"unknown policy type {policy_type!r}; available: {sorted(policy_classes())}")
    return MODEL_SIZES


def make_policy(policy_type: str, config: dict[str, Any] | Any):
    classes = policy_classes()
    if policy_type not in classes:
        raise ValueError(f"unknown policy type {policy_type!r}; available: {sorted(classes)}")
    policy_cls, config_cls = classes[policy_type]
    if isinstance(config, dict):
        config = config_cls.from_dict(config)
    return policy_cls(config)
