"""Scripted demonstrators for the robosuite tasks (``lift``, ``can``, ``square``).

Example:
    >>> from dp_gym.experts import EXPERTS
    >>> sorted(EXPERTS)
    ['can', 'lift', 'square']
"""

from __future__ import annotations

from dp_gym.experts.base import ScriptedExpert
from dp_gym.experts.tasks import CanExpert, LiftExpert, SquareExpert

__all__ = ["EXPERTS", "TASK_OF_EXPERT", "make_expert", "ScriptedExpert"]

EXPERTS: dict[str, type[ScriptedExpert]] = {"lift": LiftExpert, "can": CanExpert, "square": SquareExpert}
TASK_OF_EXPERT: dict[str, str] = {k: v.task for k, v in EXPERTS.items()}


def make_expert(name: str, env, seed: int | None = None) -> ScriptedExpert:
    """Build the expert ``name`` (``lift``, ``can`` or ``square``) driving ``env``."""
    if name not in EXPERTS:
        raise ValueError(f"unknown expert {name!r}; available: {sorted(EXPERTS)}")
    return EXPERTS[name](env, seed=seed)
