"""Deterministic selection: counts from a fraction, and top-k / bottom-k with ties to the lower index.

Every selection in the engine goes through these two functions, so growth and pruning ties are broken
the same way everywhere (gse.md §2.4: ties go to the lower linear index; callers pass scores in
ascending linear-index order, which slot order is).
"""
from __future__ import annotations

import math

import torch

from ..errors import check_choice
from ..kernels import select_k

K_ROUNDING = ("round", "floor", "ceil")


def count_of(fraction: float, total: int, rule: str = "round") -> int:
    """k = rule(fraction · total) (D4): 'round' is round half up; float noise below 1e-9 is ignored."""
    check_choice(rule, "k_rounding", K_ROUNDING)
    x = round(fraction * total, 9)
    if rule == "round":
        return int(math.floor(x + 0.5))
    return int(math.floor(x)) if rule == "floor" else int(math.ceil(x))


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending positions of the ``k`` largest scores; among equal scores the lower position wins.

    :func:`sparsetrain.kernels.select_k`: a sample-bracketed two-pass select on CPU (no sort; NaN ranks
    above +inf, -0.0 equals +0.0).
    """
    return select_k(scores, k, largest=True)


def bottom_k(scores: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """Ascending positions of the ``k`` smallest scores (of |scores| with ``absolute``, without forming
    them); among equal scores the lower position wins."""
    return select_k(scores, k, largest=False, absolute=absolute)
