"""Configuration of the explicit behaviour-cloning baseline (one dataclass, validated in
``__post_init__``)."""

from __future__ import annotations

from dataclasses import dataclass

from dp_gym.policies.mlp import MLPPolicyConfig


@dataclass
class BCConfig(MLPPolicyConfig):
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
