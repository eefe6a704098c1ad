"""Static sparse training: the initial topology never changes (gse.md §2.6)."""
from __future__ import annotations

from .base import Method
from .registry import register


@register
class Static(Method):
    """No topology update ever; ``step()`` only counts steps and keeps masked layers masked."""

    name = "static"
    parameters = {}
