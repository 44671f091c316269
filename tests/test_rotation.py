"""Rotation conversions (dp_gym.utils.rotation): round trips and conventions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dp_gym.utils.rotation import (
    axis_angle_to_matrix,
    axis_angle_to_rot6d,
    matrix_to_quat,
    matrix_to_rot6d,
    quat_to_matrix,
    quat_to_rot6d,
    rot6d_to_axis_angle,
    rot6d_to_matrix,
)


def _random_axis_angles(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = rng.uniform(0.0, np.pi - 1e-3, size=(n, 1))  # axis-angle is unique for angles < pi
    return axis * angle


def test_rot6d_axis_angle_round_trip() -> None:
    aa = _random_axis_angles(500)
    back = rot6d_to_axis_angle(axis_angle_to_rot6d(aa))
    np.testing.assert_allclose(back, aa, atol=1e-9)


def test_rot6d_is_first_two_rows_and_gram_schmidt_repairs_noise() -> None:
    m = axis_angle_to_matrix(_random_axis_angles(50, seed=1))
    r6 = matrix_to_rot6d(m)
    np.testing.assert_array_equal(r6[:, :3], m[:, 0, :])
    np.testing.assert_array_equal(r6[:, 3:], m[:, 1, :])
    noisy = r6 * 1.7 + np.random.default_rng(2).normal(0, 0.01, r6.shape)
    rec = rot6d_to_matrix(noisy)
    np.testing.assert_allclose(rec @ np.swapaxes(rec, -1, -2), np.broadcast_to(np.eye(3), rec.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rec), 1.0, atol=1e-9)
    assert np.max(np.abs(rec - m)) < 0.05


def test_quaternion_convention_is_xyzw_and_batched() -> None:
    q = Rotation.from_rotvec([[0.0, 0.0, np.pi / 2]]).as_quat()  # scipy: (x, y, z, w)
    m = quat_to_matrix(q.reshape(1, 1, 4))
    assert m.shape == (1, 1, 3, 3)
    np.testing.assert_allclose(m[0, 0] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    back = matrix_to_quat(m)
    assert back[..., 3].min() >= 0
    np.testing.assert_allclose(np.abs(back.reshape(4)), np.abs(q.reshape(4)), atol=1e-12)
    np.testing.assert_allclose(quat_to_rot6d(q), matrix_to_rot6d(m[0]), atol=1e-12)


@pytest.mark.parametrize(
    "fn, arg, match",
    [
        (rot6d_to_matrix, np.zeros(5), "last dimension 6"),
        (rot6d_to_matrix, np.r_[1.0, 0, 0, 2.0, 0, 0], "parallel"),
        (rot6d_to_matrix, np.zeros(6), "zero norm"),
        (quat_to_matrix, np.zeros(4), "zero norm"),
        (matrix_to_rot6d, np.eye(4), r"\(3, 3\)"),
    ],
)
def test_invalid_inputs_raise(fn, arg, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn(arg)
