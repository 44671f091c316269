"""Configuration of the explicit behaviour-cloning baseline (one dataclass, validated in
``__post_init__``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dp_gym.policies.base import ConfigDict
from dp_gym.policies.common import MLP_MODEL_SIZES, validate_mlp_policy_fields


@dataclass
class BCConfig(ConfigDict):
    """Everything needed to rebuild a :class:`BCPolicy` (saved as JSON in checkpoints).

    An MLP maps the flattened, normalised ``n_obs_steps``-step observation history to actions and is
    trained with MSE in normalised action space.

    ``chunked`` and ``n_action_steps``: the policy always predicts exactly the ``n_action_steps``
    actions the agent executes, starting at the current step (index To-1 of the training window),
    so ``predict_chunk`` returns (B, n_action_steps, A).

    * ``chunked=True``: Ta = n_action_steps actions [To-1, To-1+Ta) are regressed at once and run
      open loop, like the diffusion policy's chunks.
    * ``chunked=False``: classic single-step BC; requires ``n_action_steps == 1`` (validated), so the
      agent re-plans at every step. (``chunked=True`` with ``n_action_steps=1`` is the same model;
      the flag states the intent and catches a forgotten ``--n-action-steps 1``.)

    ``horizon`` only sets the length of the training windows; it must cover To-1+Ta (the shortest
    valid window, To-1+Ta, loses the fewest frames at episode ends; the trainer uses it).
    """

    obs_shapes: dict[str, list[int]]
    action_dim: int
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    chunked: bool = True
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "mish"  # "mish" | "relu" | "gelu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        validate_mlp_policy_fields(self)


    @property
    def pred_steps(self) -> int:
        """Number of actions predicted per call (== n_action_steps, see the class docstring)."""
        return self.n_action_steps




MODEL_SIZES = MLP_MODEL_SIZES
