"""Helpers shared by the model definitions."""
from __future__ import annotations

import math
from typing import Sequence

from ..errors import ConfigError


def scaled(n: int, width: float) -> int:
    """``n`` hidden units/channels times ``width``, rounded, at least 1."""
    return max(1, int(round(n * width)))


def image_shape(input_shape: Sequence[int], model: str, *, min_side: int = 1) -> tuple[int, int, int]:
    """Check that ``input_shape`` is (C, H, W) with sides >= ``min_side``."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < min_side:
        raise ConfigError(f"model {model!r} needs input_shape (C, H, W) with H, W >= {min_side}, got {tuple(input_shape)}")
    return shape  # type: ignore[return-value]


def flat_size(input_shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in input_shape)
