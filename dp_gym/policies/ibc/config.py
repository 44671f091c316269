"""Configuration of the implicit behaviour-cloning baseline (one dataclass, validated in
``__post_init__``)."""

from __future__ import annotations

from dataclasses import dataclass

from dp_gym.policies.mlp import MLPPolicyConfig


@dataclass
class IBCConfig(MLPPolicyConfig):
    """Everything needed to rebuild an :class:`IBCPolicy` (saved as JSON in checkpoints).

    Implicit BC (Florence et al., CoRL 2021): an energy MLP ``E(o, a)`` over the flattened,
    normalised To-step observation history and a normalised action — the single current action
    (``chunked=False``, requires ``n_action_steps == 1``) or the Ta-step chunk [To-1, To-1+Ta)
    (``chunked=True``); same chunking semantics as :class:`~dp_gym.policies.bc.config.BCConfig`.
    Actions live in the normaliser's box [-1, 1]^(Ta*A).

    Training: InfoNCE with ``n_counter_examples`` uniform counter-examples per sample.
    Inference: derivative-free optimisation (:func:`~dp_gym.policies.ibc.policy.dfo_minimize`):
    ``n_samples`` uniform candidates, ``n_iters`` rounds of resampling by softmax(-E/temperature)
    plus Gaussian noise (std ``noise_scale``, multiplied by ``noise_shrink`` after each round),
    then the lowest-energy candidate (``dfo_select="argmax"``, as in IBC) or one drawn from
    softmax(-E / temperature) over the final candidates (``"sample"``: samples every mode of a
    multimodal energy instead of always the lowest one).
    """

    # InfoNCE
    n_counter_examples: int = 256
    # Derivative-free optimiser (inference)
    n_samples: int = 1024
    n_iters: int = 3
    noise_scale: float = 0.33
    noise_shrink: float = 0.5
    temperature: float = 1.0
    dfo_select: str = "argmax"  # "argmax" (IBC) | "sample": draw the final action from softmax(-E/T)

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_dfo_args(self.n_samples, self.n_iters, self.noise_scale, self.noise_shrink, self.temperature, self.dfo_select)
        if self.n_counter_examples < 1:
            raise ValueError(f"n_counter_examples must be >= 1, got {self.n_counter_examples}")


def validate_dfo_args(n_samples: int, n_iters: int, noise_scale: float, noise_shrink: float, temperature: float,
                      select: str = "argmax") -> None:
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0, got {n_iters}")
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    if not 0 < noise_shrink <= 1:
        raise ValueError(f"noise_shrink must be in (0, 1], got {noise_shrink}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if select not in ("argmax", "sample"):
        raise ValueError(f"DFO selection must be 'argmax' or 'sample', got {select!r}")
