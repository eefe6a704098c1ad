"""Input validation that names the field, the value and what is allowed (DESIGN rule 5)."""
from __future__ import annotations

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
