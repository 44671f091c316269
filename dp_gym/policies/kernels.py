"""The switch for dp_gym's hand-written CPU kernel forms: the UNet's training forms
(:mod:`dp_gym.policies.diffusion.train_kernels`) and the camera network's channels-last max pool
(:class:`dp_gym.policies.vision.MaxPool2d`). They are on by default; :func:`pytorch_kernels`
turns them off, which is the textbook reference ``python -m dp_gym.perf`` times them against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_enabled = True


def enabled() -> bool:
    """Whether the hand-written forms run (False inside :func:`pytorch_kernels`)."""
    return _enabled


@contextlib.contextmanager
def pytorch_kernels() -> Iterator[None]:
    """Within this context every layer runs PyTorch's own kernels.

    >>> with pytorch_kernels():
    ...     enabled()
    False
    """
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous
