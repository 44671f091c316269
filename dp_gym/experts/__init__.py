"""Scripted demonstrators for the robosuite tasks (``lift``, ``can``, ``square``; ``square_loose`` is
the Square expert with a looser alignment test before insertion).

Example:
    >>> from dp_gym.experts import EXPERTS
    >>> sorted(EXPERTS)
    ['can', 'lift', 'square', 'square_loose']
"""

from __future__ import annotations

from dp_gym.experts.base import ScriptedExpert
from dp_gym.experts.tasks import CanExpert, LiftExpert, SquareExpert, SquareLooseExpert

__all__ = ["EXPERTS", "TASK_OF_EXPERT", "make_expert", "ScriptedExpert"]

EXPERTS: dict[str, type[ScriptedExpert]] = {"lift": LiftExpert, "can": CanExpert, "square": SquareExpert,
                                             "square_loose": SquareLooseExpert}
TASK_OF_EXPERT: dict[str, str] = {k: v.task for k, v in EXPERTS.items()}


def make_expert(name: str, env, seed: int | None = None) -> ScriptedExpert:
    """Build the expert ``name`` (``lift``, ``can``, ``square`` or ``square_loose``) driving ``env``."""
    if name not in EXPERTS:
        raise ValueError(f"unknown expert {name!r}; available: {sorted(EXPERTS)}")
    return EXPERTS[name](env, seed=seed)
