"""Validation of data-set options: errors name the option, the value and what is allowed (DESIGN rule 5)."""
from __future__ import annotations

from typing import Any

from ..errors import check_int, check_number


def positive_int(value: Any, field: str) -> int:
    """An int >= 1 (bools refused)."""
    return check_int(value, field, 1)


def fraction(value: Any, field: str, *, closed_low: bool = False) -> float:
    """A number in (0, 1) (or [0, 1) with ``closed_low``)."""
    return check_number(value, field, 0.0, 1.0, low_open=not closed_low, high_open=True)
