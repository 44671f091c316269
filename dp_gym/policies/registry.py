"""The policy registry: name → policy class, filled by the :func:`register_policy` decorator.

The built-in policies live one per sub-package, ``dp_gym/policies/<name>/`` with a ``config.py``
(the config dataclass) and a ``policy.py`` (the model, decorated with ``@register_policy``); every
sub-package holding a ``policy.py`` is imported the first time the registry is read, so a new one
needs no edit elsewhere. A policy defined outside dp_gym registers itself when its module is
imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from typing import Any, Callable, TypeVar

P = TypeVar("P", bound=type)

_REGISTRY: dict[str, type] = {}
_builtins_loaded = False


def register_policy(name: str) -> Callable[[P], P]:
    """Class decorator: make a :class:`~dp_gym.policies.policy.Policy` subclass available as
    ``name`` (``--policy name``, ``policy_type`` in checkpoints).

    Example::

        @register_policy("flow")
        class FlowPolicy(Policy):
            config_class = FlowConfig
            stochastic = True
            ...
    """
    if not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"a policy name must be an identifier like 'diffusion', got {name!r}")

    def decorate(cls: P) -> P:
        from dp_gym.policies.config import PolicyConfig
        from dp_gym.policies.policy import Policy

        if not (inspect.isclass(cls) and issubclass(cls, Policy)):
            raise TypeError(f"@register_policy({name!r}) decorates Policy subclasses, got {cls!r}")
        if inspect.isabstract(cls):
            missing = sorted(getattr(cls, "__abstractmethods__", ()))
            raise TypeError(f"@register_policy({name!r}): {cls.__name__} does not implement {missing}")
        config_cls = getattr(cls, "config_class", None)
        if not (inspect.isclass(config_cls) and issubclass(config_cls, PolicyConfig)):
            raise TypeError(f"@register_policy({name!r}): {cls.__name__}.config_class must be a PolicyConfig "
                            f"dataclass, got {config_cls!r}")
        for flag, method in (("stochastic", "noise_shape"), ("accelerable", "make_accelerator")):
            if getattr(cls, flag) and getattr(cls, method) is getattr(Policy, method):
                raise TypeError(f"@register_policy({name!r}): {cls.__name__} declares {flag} = True but does not "
                                f"implement {method}()")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"policy name {name!r} is already taken by {_REGISTRY[name].__module__}."
                             f"{_REGISTRY[name].__name__}")
        cls.policy_type = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    """Import ``dp_gym.policies.<pkg>.policy`` for every sub-package that has one (once)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    import dp_gym.policies as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.ispkg and importlib.util.find_spec(f"{package.__name__}.{info.name}.policy") is not None:
            importlib.import_module(f"{package.__name__}.{info.name}.policy")
    _builtins_loaded = True


def registered_policies() -> dict[str, type]:
    """Every registered policy: name → class, in registration order."""
    _load_builtins()
    return dict(_REGISTRY)


def policy_names() -> list[str]:
    """The registered policy names, sorted."""
    return sorted(registered_policies())


def get_policy_class(policy_type: str) -> type:
    """The class registered as ``policy_type``; an unknown name raises ``ValueError`` listing the
    known ones."""
    registry = registered_policies()
    if policy_type not in registry:
        raise ValueError(f"unknown policy type {policy_type!r}; available: {sorted(registry)}")
    return registry[policy_type]


def policy_classes() -> dict[str, tuple[type, type]]:
    """name → (policy class, config class) for every registered policy."""
    return {name: (cls, cls.config_class) for name, cls in registered_policies().items()}


def model_sizes(policy_type: str) -> dict[str, dict[str, Any]]:
    """Named size presets (``--model-size``) of a policy type: size name → config overrides."""
    return get_policy_class(policy_type).model_sizes


def make_policy(policy_type: str, config: dict[str, Any] | Any):
    """A new policy of type ``policy_type`` from its config (a config object or its dict)."""
    cls = get_policy_class(policy_type)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config)
    return cls(config)
