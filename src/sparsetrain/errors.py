"""Input validation that names the field, the value and what is allowed (DESIGN rule 5)."""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable


class ConfigError(ValueError):
    """A bad argument or configuration value; the message names the field and the allowed values."""


def check_sparsity(value: Any, field: str = "sparsity") -> float:
    """Validate a sparsity (fraction of zeros) in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field} must be a number in [0, 1), got {value!r} ({type(value).__name__})")
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{field} must be in [0, 1) (fraction of zeros), got {value!r}")
    return float(value)


def check_choice(value: Any, field: str, allowed: Iterable[str]) -> str:
    """Validate that ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_number(value: Any, field: str, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = False) -> float:
    """A finite real number in the interval [low, high] (ends open as asked), else an error naming the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{field} must be a number, got {value!r}")
    v = float(value)
    if v > high or v < low or (low_open and v == low) or (high_open and v == high):
        raise ConfigError(f"{field} must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}, "
                          f"got {value!r}")
    return v


def check_int(value: Any, field: str, minimum: int) -> int:
    """An integer (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bool(value: Any, field: str) -> bool:
    """Exactly True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be True or False, got {value!r}")
    return value
