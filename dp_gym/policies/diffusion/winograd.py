"""Winograd's minimal filtering for the UNet's 1-D 'same' convolutions, as constant matrices.

A k-tap convolution over a length-t axis becomes three matrix products: a transform of the
inputs, one channel GEMM per transform point with transformed weights, and a transform back to
positions (fewer multiplies than t * k per channel pair). Sampling runs it in the exported trunk
(:class:`~dp_gym.policies.diffusion.accelerate._WinogradConv`), training for the shortest axes
(:class:`~dp_gym.policies.diffusion.train_kernels.Conv1d`). Written by hand: no library we use
derives these transforms for arbitrary (m, k) or runs Winograd for 1-D convolutions on CPU.
"""

from __future__ import annotations

import torch

__all__ = ["toom_cook", "whole_axis_pays", "winograd_tiling", "winograd_whole"]


def toom_cook(m: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Winograd's minimal filtering F(m, r) in Toom-Cook form, float64: (A^T (m, n), G (n, r),
    B^T (n, n)) with n = m + r - 1, so that the correlation y_i = sum_j g_j d_{i+j} of a
    length-n input tile d with an r-tap filter g is ``A^T ((G g) * (B^T d))``: n multiplies for m
    outputs instead of m * r. Evaluation points 0, ±1, ±2, ±1/2, ... and infinity (the smallest
    magnitudes first, which keeps the transforms' float32 error near 1e-6 for F(4, 5)).
    Derived by transposing the Toom-Cook linear convolution s = C^-1 ((V_g g) * (V_d d)), V the
    Vandermonde matrices of the points, C that of the product's n coefficients."""
    n = m + r - 1
    finite = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0, 1 / 3, -1 / 3][: n - 1]
    if len(finite) < n - 1:
        raise ValueError(f"F({m}, {r}) needs {n - 1} finite points, {len(finite)} are defined")

    def vandermonde(k: int) -> torch.Tensor:  # (n, k): the points' powers, then infinity's leading coefficient
        return torch.tensor([[p**j for j in range(k)] for p in finite] + [[0.0] * (k - 1) + [1.0]], dtype=torch.float64)

    return vandermonde(m).T, vandermonde(r), torch.linalg.inv(vandermonde(n)).T


def winograd_tiling(m: int, k: int, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F(m, k) over a length-``t`` axis with 'same' zero padding (k // 2), as constant float64
    matrices: ``transform_in`` (n * tiles, t) gathers and transforms every tile's n = m + k - 1
    inputs (rows ordered transform point, then tile), ``transform_out`` (t, n * tiles) takes the
    tiles back to positions, ``g`` (n, k) transforms a filter (:func:`toom_cook`)."""
    a_t, g, b_t = toom_cook(m, k)
    n, tiles, pad = m + k - 1, -(-t // m), k // 2
    transform_in = torch.zeros(n * tiles, t, dtype=torch.float64)
    transform_out = torch.zeros(t, n * tiles, dtype=torch.float64)
    for q in range(tiles):
        for l in range(n):
            if 0 <= (pos := q * m - pad + l) < t:
                transform_in[q::tiles, pos] += b_t[:, l]
        for i in range(min(m, t - q * m)):
            transform_out[q * m + i, q::tiles] = a_t[i]
    return transform_in, transform_out, g


def winograd_whole(k: int, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A k-tap 'same' correlation over a whole length-``t`` axis (zero padding k // 2) as one
    Winograd tile with the roles swapped, the same three float64 matrices as
    :func:`winograd_tiling` with one tile. Output i is sum_s x_s w_(s - i + k // 2) over the t
    inputs, i.e. (outputs reversed) F(t, t) with the activations as the t-tap filter and the
    2t - 1 weight taps that can meet an input as the data: 2t - 1 multiplies for the whole axis,
    7 at t = 4 against F(4, 5)'s 8, whose tile also spends transform points on the padding."""
    a_t, g, b_t = toom_cook(t, t)
    n, pad = 2 * t - 1, k // 2
    taps = torch.zeros(n, k, dtype=torch.float64)  # data position q ↔ weight tap q + pad - t + 1
    for q in range(n):
        if 0 <= (j := q + pad - t + 1) < k:
            taps[q, j] = 1.0
    return g, a_t.flip(0), b_t @ taps


def whole_axis_pays(k: int, t: int, tile: int = 4, max_t: int = 4) -> bool:
    """Whether a k-tap 'same' convolution over a length-``t`` axis takes fewer multiplies as one
    swapped tile (:func:`winograd_whole`, 2t - 1) than as F(``tile``, k) tiles (tile + k - 1 per
    tile), for axes of at most ``max_t`` positions (2 * 4 - 1 = 7 points keep the float32 error
    near 1e-6): at the UNet's deepest level, t = 4 and k = 5, 7 against 8."""
    return t <= max_t and 2 * t - 1 < tile + k - 1
