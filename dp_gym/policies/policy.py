"""The interface every dp_gym policy implements: :class:`Policy`.

A policy is an ``nn.Module`` built from one config (a :class:`~dp_gym.policies.config.PolicyConfig`
dataclass). It holds min-max normalisers for each low-dim observation key and for the action (module
names ``obs_normalizers`` / ``action_normalizer``, part of the checkpoint format), trains with
:meth:`Policy.compute_loss` and acts with :meth:`Policy.predict_chunk`. What a policy can do beyond
that is declared as capabilities (class attributes, read on the class or an instance), which the
trainer, the agent, the benchmark and the zoo query instead of the policy's type name:

=========================  ===================================================================
``samples_horizon``        samples a whole ``horizon`` and executes a window of it, so the
                           executed actions per chunk (``n_action_steps``) may change after
                           training
``stochastic``             ``predict_chunk`` consumes standard normals of shape
                           ``noise_shape(**sample_kwargs)`` per observation (``noise=``)
``samplers``               the ``sampler=`` names ``predict_chunk`` accepts (empty: none)
``accepts_step_count``     ``predict_chunk(num_inference_steps=...)``
``accepts_noise_scale``    ``predict_chunk(noise_scale=s)`` multiplies the sampling noise by s (a
                           temperature)
``accelerable``            :meth:`Policy.make_accelerator` builds a faster sampling path
                           (compiled / CUDA graph / ONNX Runtime) that ``predict_chunk(accelerator=...)``
                           uses
``model_sizes``            named config presets for ``--model-size``: name → config overrides
=========================  ===================================================================

A policy becomes available under a name (``--policy NAME``, the checkpoint's ``policy_type``) with
the :func:`~dp_gym.policies.registry.register_policy` decorator on its class.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from dp_gym.data.normalizer import MinMaxNormalizer
from dp_gym.policies.config import PolicyConfig
from dp_gym.policies.vision import ImageObsEncoder

# The paper's AdamW weight decay for its MLP / UNet policies and its image encoder.
DEFAULT_WEIGHT_DECAY = 1e-6


def check_obs(obs: dict[str, torch.Tensor], obs_shapes: dict[str, list[int]], n_obs_steps: int) -> None:
    """Raise a clear error unless ``obs`` holds every key with shape (B, To, *shape): finite floats
    for low-dim keys, uint8 (H, W, C) images for image keys."""
    missing = [k for k in obs_shapes if k not in obs]
    if missing:
        raise KeyError(f"observation is missing keys {missing}; expected keys {list(obs_shapes)}, got {list(obs)}")
    batch = None
    for key, shape in obs_shapes.items():
        x = obs[key]
        expected = (n_obs_steps, *shape)
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"observation {key!r} must have shape (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if batch is None:
            batch = x.shape[0]
        elif x.shape[0] != batch:
            raise ValueError(f"observation {key!r} has batch {x.shape[0]}, others have {batch}")
        if len(shape) == 3:
            if x.dtype != torch.uint8:
                raise TypeError(f"image observation {key!r} must be uint8 (H, W, C) with values 0-255, got {x.dtype}")
            continue
        if not x.is_floating_point():
            raise TypeError(f"observation {key!r} must be a float tensor, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError(f"observation {key!r} contains NaN or inf")


class Policy(nn.Module, abc.ABC):
    """Abstract base of every policy: normalisers, the loss, chunk prediction and capabilities.

    Subclasses set :attr:`config_class`, implement :meth:`compute_loss` and :meth:`predict_chunk`,
    declare their capabilities (the class attributes below; all off by default) and, when
    ``stochastic`` / ``accelerable``, implement :meth:`noise_shape` / :meth:`make_accelerator`.
    """

    # Set by @register_policy: the name checkpoints and --policy use.
    policy_type: ClassVar[str]
    # The config dataclass this policy is built from.
    config_class: ClassVar[type[PolicyConfig]]
    # --- capabilities -----------------------------------------------------------------------
    samples_horizon: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    samplers: ClassVar[tuple[str, ...]] = ()
    accepts_step_count: ClassVar[bool] = False
    accepts_noise_scale: ClassVar[bool] = False
    accelerable: ClassVar[bool] = False
    model_sizes: ClassVar[dict[str, dict[str, Any]]] = {}

    # The accelerator predict_chunk uses when none is passed (accelerable policies; set by
    # PolicyAgent.accelerate).
    accelerator: Any = None

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        # Images are scaled to [-1, 1] by their encoder; only low-dim keys get min-max normalisers.
        self.obs_normalizers = nn.ModuleDict({k: MinMaxNormalizer(s[0]) for k, s in config.obs_shapes.items() if len(s) == 1})
        self.action_normalizer = MinMaxNormalizer(config.action_dim)
        self.image_encoder: ImageObsEncoder | None = None  # built by build_image_encoder

    def build_image_encoder(self) -> None:
        """Give the policy one camera encoder per image key (when it has any), configured by its
        :class:`~dp_gym.policies.config.ImageEncoderConfig` fields. Subclasses call it in
        ``__init__``; where they call it fixes the order their weights are initialised in."""
        c = self.config
        if c.image_keys:
            self.image_encoder = ImageObsEncoder(
                {k: c.obs_shapes[k] for k in c.image_keys}, crop_shape=c.crop_shape, feature_dim=c.image_feature_dim,
                num_keypoints=c.spatial_softmax_keypoints, group_size=c.group_norm_group_size, width=c.image_encoder_width,
            )

    # --- what the trainer calls ---------------------------------------------------------------
    @classmethod
    def config_from_options(cls, options: Any, obs_shapes: dict[str, list[int]], action_dim: int) -> dict[str, Any]:
        """The config dict a training run's options ask for, before its ``policy_overrides``:
        the task's shapes, To / Ta from ``options.n_obs_steps`` / ``options.n_action_steps``, the
        ``options.model_size`` preset, and the horizon: ``options.horizon`` for a policy that
        ``samples_horizon``, else the shortest window holding the executed actions, To-1+Ta
        (it predicts nothing beyond it, and a longer window would drop training frames at
        episode ends). Subclasses add the options only they read."""
        if options.model_size not in cls.model_sizes:
            raise ValueError(f"unknown model size {options.model_size!r} for policy {cls.policy_type!r}; "
                             f"available: {sorted(cls.model_sizes)}")
        to, ta = options.n_obs_steps, options.n_action_steps
        return dict(obs_shapes=obs_shapes, action_dim=action_dim,
                    horizon=options.horizon if cls.samples_horizon else to + ta - 1,
                    n_obs_steps=to, n_action_steps=ta, **cls.model_sizes[options.model_size])

    @property
    def normalized_keys(self) -> list[str]:
        """Keys whose data :meth:`fit_normalizers` needs (low-dim observations and ``action``)."""
        return [*self.obs_normalizers, "action"]

    def fit_normalizers(self, data: dict[str, torch.Tensor]) -> None:
        """Fit the min-max normalisers on the full training arrays (frames on axis 0)."""
        for key in self.obs_normalizers:
            self.obs_normalizers[key].load_state_dict(MinMaxNormalizer.fit(data[key]).state_dict())
        self.action_normalizer.load_state_dict(MinMaxNormalizer.fit(data["action"]).state_dict())

    def optim_groups(self, weight_decay: float | None = None) -> list[dict[str, Any]]:
        """AdamW parameter groups; ``weight_decay=None`` takes the policy's default
        (``DEFAULT_WEIGHT_DECAY``). Subclasses split groups where the paper does."""
        wd = DEFAULT_WEIGHT_DECAY if weight_decay is None else float(weight_decay)
        return [{"params": list(self.parameters()), "weight_decay": wd}]

    @abc.abstractmethod
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss of a batch of windows: every observation key and ``action`` with
        shape (B, horizon, ...) in environment units."""

    # --- what the agent calls -----------------------------------------------------------------
    @abc.abstractmethod
    def predict_chunk(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                      **sample_kwargs: Any) -> torch.Tensor:
        """The ``n_action_steps`` actions to execute from the current step on, (B, Ta, A) in
        environment units, for observation histories (B, To, *shape) per key. A ``stochastic``
        policy takes its randomness from ``noise=`` (B, *noise_shape(...)) when given, else from
        ``generator``; the other keywords are those its capabilities declare."""

    def noise_shape(self, **sample_kwargs: Any) -> tuple[int, ...]:
        """Per-observation standard normals one ``predict_chunk(**sample_kwargs)`` call consumes
        (``stochastic`` policies)."""
        raise TypeError(f"{type(self).__name__} is deterministic (stochastic = False): it consumes no noise")

    def make_accelerator(self, mode: str, autocast: str = "no", **sample_kwargs: Any) -> Any:
        """A sampling accelerator in ``mode`` for the sampler settings ``sample_kwargs``
        (``accelerable`` policies); ``predict_chunk(accelerator=...)`` runs with it."""
        raise TypeError(f"{type(self).__name__} has no accelerated sampling path (accelerable = False)")

    def encode_obs(self, obs: dict[str, torch.Tensor], obs_noise_std: float = 0.0,
                   camera_features: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """(B, To, *shape) per key → (B, To, F) per-step observation features: image features of
        every camera (all B*To frames in one encoder pass; ``camera_features`` runs the cameras'
        networks instead when given, see :class:`ImageObsEncoder`), then the normalised low-dim
        keys, plus Gaussian noise of std ``obs_noise_std`` on those (a training augmentation)."""
        feats = []
        if self.image_encoder is not None:
            images = {k: obs[k].flatten(0, 1) for k in self.config.image_keys}  # (B*To, H, W, C)
            b, to = obs[self.config.image_keys[0]].shape[:2]
            feats.append(self.image_encoder(images, camera_features).reshape(b, to, -1))
        if self.config.lowdim_keys:
            lowdim = self.normalized_obs(obs)
            feats.append(lowdim + obs_noise_std * torch.randn_like(lowdim) if obs_noise_std > 0 else lowdim)
        return torch.cat(feats, dim=-1) if len(feats) > 1 else feats[0]

    def normalized_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, To, D_k) per low-dim key → (B, To, sum D_k), normalised, keys in config order."""
        return torch.cat([self.obs_normalizers[k].normalize(obs[k].float()) for k in self.obs_normalizers], dim=-1)
