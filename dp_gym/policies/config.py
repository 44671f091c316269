"""The base of every policy config: :class:`PolicyConfig` (a dataclass mixin with the JSON round
trip, strict decoding and the observation-key views) and :func:`validate_policy_fields`, which a
config's ``__post_init__`` calls to check the fields every policy has."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar, Union

C = TypeVar("C", bound="PolicyConfig")

# Upper bound on every size a config names (dimensions, widths, horizons, step counts): a checkpoint
# or override asking for more is refused before anything is allocated.
MAX_SIZE = 1 << 16


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _conforms(value: Any, tp: Any) -> bool:
    """Whether a JSON-decoded ``value`` fits the annotation ``tp`` (int, float, bool, str, list[X],
    dict[K, V], unions / Optional, Any). bool is not an int here, an int is a float."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_conforms(v, item) for v in value)
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(_conforms(k, k_tp) and _conforms(v, v_tp) for k, v in value.items())
    return isinstance(value, tp) if isinstance(tp, type) else True


class PolicyConfig:
    """Mixin for policy config dataclasses (``@dataclass class MyConfig(PolicyConfig)``): the
    fields ``obs_shapes``, ``action_dim``, ``horizon``, ``n_obs_steps`` and ``n_action_steps`` every
    policy has, ``to_dict`` / ``from_dict`` (the JSON a checkpoint stores) with unknown keys
    rejected, and the low-dim / image split of the observation keys. A config validates itself in
    ``__post_init__`` (call :func:`validate_policy_fields` there)."""

    obs_shapes: dict[str, list[int]]
    action_dim: int
    horizon: int
    n_obs_steps: int
    n_action_steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Build the config from a JSON dict (a checkpoint's or ``--policy-overrides``): unknown
        keys, values of the wrong type and non-finite numbers raise ``ValueError`` naming the field;
        ``__post_init__`` then checks values and bounds."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__} must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        hints = typing.get_type_hints(cls)
        for name, value in d.items():
            if not _conforms(value, hints[name]):
                raise ValueError(f"{cls.__name__}.{name} must be {_type_name(hints[name])}, got {value!r} ({type(value).__name__})")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{cls.__name__}.{name} must be finite, got {value!r}")
        return cls(**d)

    @property
    def lowdim_keys(self) -> list[str]:
        """Observation keys with a (D,) shape, concatenated (normalised) into the conditioning."""
        return [k for k, s in self.obs_shapes.items() if len(s) == 1]  # type: ignore[attr-defined]

    @property
    def image_keys(self) -> list[str]:
        """Observation keys with an (H, W, C) uint8 image shape, one encoder each."""
        return [k for k, s in self.obs_shapes.items() if len(s) == 3]  # type: ignore[attr-defined]

    @property
    def obs_feature_dim(self) -> int:
        """Per-step conditioning width: low-dim dims + ``image_feature_dim`` per camera."""
        low = sum(self.obs_shapes[k][0] for k in self.lowdim_keys)  # type: ignore[attr-defined]
        return low + len(self.image_keys) * int(getattr(self, "image_feature_dim", 0))


@dataclass(kw_only=True)
class ImageEncoderConfig:
    """The camera-encoder fields a policy config inherits (``class MyConfig(PolicyConfig,
    ImageEncoderConfig)``) to take ``(H, W, C)`` uint8 image observations: each image key gets one
    ResNet-18 encoder (see :mod:`dp_gym.policies.vision`) whose ``image_feature_dim`` features join
    the low-dim ones at every history step. Keyword-only, so a subclass's required fields may come
    first. :func:`validate_policy_fields` checks them."""

    # Random crop in training, centre crop in eval (paper, Push-T: 84 x 84 from 96 x 96); None: no crop.
    crop_shape: list[int] | None = field(default_factory=lambda: [84, 84])
    image_feature_dim: int = 64
    spatial_softmax_keypoints: int = 32
    group_norm_group_size: int = 16
    # ResNet-18's stem width (64 as in the paper; stages 1/2/4/8x it). 32 has a quarter of the
    # encoder's parameters and convolution work: what a CPU training budget affords.
    image_encoder_width: int = 64


# The ImageEncoderConfig sizes validate_policy_fields bounds like every other size.
IMAGE_ENCODER_SIZES = ("image_feature_dim", "spatial_softmax_keypoints", "group_norm_group_size", "image_encoder_width")


def _validate_image_encoder_fields(cfg: ImageEncoderConfig) -> None:
    """What is particular to the encoder fields (their sizes are bounded with the others)."""
    if cfg.image_encoder_width % cfg.group_norm_group_size:
        raise ValueError(f"image_encoder_width ({cfg.image_encoder_width}) must be a multiple of group_norm_group_size "
                         f"({cfg.group_norm_group_size})")
    if cfg.crop_shape is not None:
        cfg.crop_shape = [int(c) for c in cfg.crop_shape]
        if len(cfg.crop_shape) != 2 or min(cfg.crop_shape) < 1:
            raise ValueError(f"crop_shape must be [height, width] or None, got {cfg.crop_shape}")
        for key, shape in cfg.obs_shapes.items():  # type: ignore[attr-defined]
            if len(shape) == 3 and (cfg.crop_shape[0] > shape[0] or cfg.crop_shape[1] > shape[1]):
                raise ValueError(f"crop_shape {cfg.crop_shape} is larger than image {key!r} of shape {shape}")


def validate_policy_fields(cfg: Any, positive: tuple[str, ...] = ()) -> None:
    """Normalise and validate what every policy config has (raises ValueError): ``obs_shapes``
    (low-dim ``(D,)``; for an :class:`ImageEncoderConfig` also ``(H, W, C)`` images with C in 1
    or 3, and its encoder fields), positive ``action_dim`` / ``horizon`` / ``n_obs_steps`` /
    ``n_action_steps`` (and the extra names in ``positive``), and a horizon covering To-1+Ta."""
    allow_images = isinstance(cfg, ImageEncoderConfig)
    cfg.obs_shapes = {str(k): [int(d) for d in v] for k, v in cfg.obs_shapes.items()}
    if not cfg.obs_shapes:
        raise ValueError("obs_shapes must name at least one observation key")
    for key, shape in cfg.obs_shapes.items():
        is_lowdim = len(shape) == 1 and shape[0] >= 1
        is_image = len(shape) == 3 and shape[2] in (1, 3) and min(shape) >= 1
        if is_image and not allow_images:
            raise ValueError(f"observation {key!r}: this policy takes only low-dim (D,) observations, got image shape {shape}")
        if not (is_lowdim or is_image):
            expected = "(D,) low-dim or (H, W, C) image with C in 1 or 3" if allow_images else "(D,) low-dim"
            raise ValueError(f"observation {key!r}: expected a {expected} shape, got {shape}")
        if max(shape) > MAX_SIZE:
            raise ValueError(f"observation {key!r}: shape {shape} exceeds the largest supported size {MAX_SIZE}")
    for name in ("action_dim", "horizon", "n_obs_steps", "n_action_steps", *positive, *(IMAGE_ENCODER_SIZES if allow_images else ())):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if getattr(cfg, name) > MAX_SIZE:
            raise ValueError(f"{name} must be <= {MAX_SIZE}, got {getattr(cfg, name)}")
    for name in ("down_dims", "hidden_dims"):
        widths = getattr(cfg, name, None) or []
        if any(not 1 <= int(w) <= MAX_SIZE for w in widths):
            raise ValueError(f"{name} must hold widths in 1..{MAX_SIZE}, got {list(widths)}")
    if cfg.n_obs_steps + cfg.n_action_steps - 1 > cfg.horizon:
        raise ValueError(
            f"horizon ({cfg.horizon}) must cover n_obs_steps - 1 + n_action_steps "
            f"({cfg.n_obs_steps - 1} + {cfg.n_action_steps}): executed actions start at index To-1"
        )
    if allow_images:
        _validate_image_encoder_fields(cfg)
