"""Rotation conversions between the representations used by robosuite and Diffusion Policy.

* quaternion: ``(x, y, z, w)`` (robosuite's and scipy's order), unit norm;
* axis-angle (rotation vector): axis * angle, what robosuite's OSC controller takes;
* matrix: ``(..., 3, 3)`` rotation matrices;
* rotation-6D: the first two **rows** of the rotation matrix, flattened (the continuous
  representation of Zhou et al., CVPR 2019, in the row convention of pytorch3d's
  ``matrix_to_rotation_6d`` that Diffusion Policy uses for absolute robomimic actions).

All functions accept leading batch dimensions and return float64 arrays.

Example:
    >>> import numpy as np
    >>> from dp_gym.utils.rotation import axis_angle_to_rot6d, rot6d_to_axis_angle
    >>> aa = np.array([0.1, -0.2, 0.3])
    >>> bool(np.allclose(rot6d_to_axis_angle(axis_angle_to_rot6d(aa)), aa))
    True
    >>> rot6d_to_axis_angle(np.zeros(5))
    Traceback (most recent call last):
    ...
    ValueError: rot6d must have last dimension 6, got shape (5,)
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "quat_to_matrix",
    "matrix_to_quat",
    "rot6d_to_matrix",
    "matrix_to_rot6d",
    "axis_angle_to_rot6d",
    "rot6d_to_axis_angle",
    "quat_to_rot6d",
]


def _check_last(x: np.ndarray, n: int, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] != n:
        raise ValueError(f"{name} must have last dimension {n}, got shape {x.shape}")
    return x


def _check_matrix(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim < 2 or m.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrix must have trailing shape (3, 3), got shape {m.shape}")
    return m


def _apply(fn, x: np.ndarray, in_tail: int) -> np.ndarray:
    """Run a scipy conversion over arbitrary leading dims (scipy wants exactly one batch dim)."""
    lead = x.shape[: x.ndim - in_tail]
    flat = x.reshape((-1,) + x.shape[x.ndim - in_tail:])
    out = fn(flat)
    return out.reshape(lead + out.shape[1:])


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    aa = _check_last(aa, 3, "axis-angle")
    return _apply(lambda v: Rotation.from_rotvec(v).as_matrix(), aa, 1)


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    m = _check_matrix(m)
    return _apply(lambda v: Rotation.from_matrix(v).as_rotvec(), m, 2)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """``(x, y, z, w)`` quaternion -> matrix (the quaternion is normalised first)."""
    q = _check_last(q, 4, "quaternion")
    if np.any(np.linalg.norm(q, axis=-1) < 1e-8):
        raise ValueError("quaternion has (near) zero norm")
    return _apply(lambda v: Rotation.from_quat(v).as_matrix(), q, 1)


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Matrix -> ``(x, y, z, w)`` quaternion with ``w >= 0``."""
    m = _check_matrix(m)
    q = _apply(lambda v: Rotation.from_matrix(v).as_quat(), m, 2)
    return np.where(q[..., 3:4] < 0, -q, q)


def matrix_to_rot6d(m: np.ndarray) -> np.ndarray:
    m = _check_matrix(m)
    return m[..., :2, :].reshape(m.shape[:-2] + (6,)).copy()


def rot6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """Gram-Schmidt: any 6-vector whose two halves are not parallel maps to a rotation matrix."""
    r6 = _check_last(r6, 6, "rot6d")
    a1, a2 = r6[..., :3], r6[..., 3:]
    n1 = np.linalg.norm(a1, axis=-1, keepdims=True)
    if np.any(n1 < 1e-8):
        raise ValueError("rot6d: the first 3-vector has (near) zero norm; cannot build a rotation")
    b1 = a1 / n1
    a2p = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    n2 = np.linalg.norm(a2p, axis=-1, keepdims=True)
    if np.any(n2 < 1e-8):
        raise ValueError("rot6d: the two 3-vectors are (nearly) parallel; cannot build a rotation")
    b2 = a2p / n2
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-2)


def axis_angle_to_rot6d(aa: np.ndarray) -> np.ndarray:
    return matrix_to_rot6d(axis_angle_to_matrix(aa))


def rot6d_to_axis_angle(r6: np.ndarray) -> np.ndarray:
    return matrix_to_axis_angle(rot6d_to_matrix(r6))


def quat_to_rot6d(q: np.ndarray) -> np.ndarray:
    return matrix_to_rot6d(quat_to_matrix(q))
