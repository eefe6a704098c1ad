"""Validation of data-set options: errors name the option, the value and what is allowed (DESIGN rule 5)."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def positive_int(value: Any, field: str) -> int:
    """An int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field} must be a positive integer, got {value!r}")
    return int(value)


def fraction(value: Any, field: str, *, closed_low: bool = False) -> float:
    """A number in (0, 1) (or [0, 1) with ``closed_low``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        ok = (0.0 <= value < 1.0) if closed_low else (0.0 < value < 1.0)
    if not ok:
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise ConfigError(f"{field} must be a number in {interval}, got {value!r}")
    return float(value)
