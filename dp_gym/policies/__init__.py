"""Policies: one abstract interface, one registry, one sub-package per policy.

* :mod:`dp_gym.policies.policy`: :class:`Policy`, the interface every policy implements (loss,
  chunk prediction, normalisers, capabilities).
* :mod:`dp_gym.policies.config`: :class:`PolicyConfig`, the base of every policy's config dataclass.
* :mod:`dp_gym.policies.registry`: :func:`register_policy` (class decorator) and the look-ups
  (:func:`make_policy`, :func:`policy_classes`, :func:`model_sizes`, :func:`policy_names`).
* :mod:`dp_gym.policies.mlp`: the MLP pieces the ``bc`` and ``ibc`` baselines share.
* :mod:`dp_gym.policies.vision`: the image encoder.

Registered policies (``dp_gym/policies/<name>/config.py`` + ``policy.py``):

* ``diffusion``: Diffusion Policy (Chi et al., RSS 2023).
* ``bc``: explicit behaviour cloning, MLP + MSE (single-step or chunked).
* ``ibc``: implicit behaviour cloning (Florence et al., CoRL 2021), energy MLP + InfoNCE + DFO.
"""

from __future__ import annotations

from dp_gym.policies.registry import (get_policy_class, make_policy, model_sizes, policy_classes, policy_names,
                                      register_policy, registered_policies)

__all__ = ["get_policy_class", "make_policy", "model_sizes", "policy_classes", "policy_names", "register_policy",
           "registered_policies"]
