"""Per-layer density budgets: uniform, ER and ERK (methods/gse.md §2.7).

``D = 1 - sparsity`` is the density over all sparse layers together. ER/ERK give each layer a raw
score and scale all scores by one factor ε so that the active weights add up to ``D · Σ N_l``; a layer
whose density would exceed 1 is made dense and the rest is solved again (RigL's redistribution).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Mapping, Sequence

from .errors import ConfigError, check_choice, check_sparsity

DISTRIBUTIONS = ("uniform", "er", "erk")


def raw_score(shape: Sequence[int], distribution: str, erk_power: float = 1.0) -> float:
    """The unnormalised density score of a weight of ``shape`` (out, in[, kh, kw])."""
    if distribution == "uniform":
        return 1.0
    if distribution == "er":
        n_out, fan_in = shape[0], math.prod(shape[1:])
        return (n_out + fan_in) / (n_out * fan_in)
    return (sum(shape) / math.prod(shape)) ** erk_power


def match_override(name: str, overrides: Mapping[str, float]) -> float | None:
    """The override for a layer name: an exact name first, then the first glob that matches."""
    if name in overrides:
        return overrides[name]
    for pattern, value in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return None


def layer_densities(shapes: Mapping[str, Sequence[int]], sparsity: float, distribution: str = "erk", *,
                    overrides: Mapping[str, float] | None = None, erk_power: float = 1.0,
                    redistribute: bool = True) -> dict[str, float]:
    """Density of every layer so that the total density over these layers is ``1 - sparsity``.

    ``overrides`` maps layer names or globs to a fixed *sparsity*; those layers are fixed before the
    solve and count toward the budget. With ``redistribute=False`` ER/ERK densities are only clipped
    to 1 (GSE reference code) and the total may fall below the target.
    """
    check_sparsity(sparsity)
    check_choice(distribution, "distribution", DISTRIBUTIONS)
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        check_sparsity(value, f"overrides[{key!r}]")
    unmatched = [p for p in overrides if not any(n == p or fnmatch.fnmatchcase(n, p) for n in shapes)]
    if unmatched:
        raise ConfigError(f"overrides name no sparse layer: {unmatched}; layers are {sorted(shapes)}")
    if not shapes:
        return {}

    target = 1.0 - sparsity
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    density: dict[str, float] = {}
    for name in shapes:
        fixed = match_override(name, overrides)
        if fixed is not None:
            density[name] = 1.0 - fixed
    free = [n for n in shapes if n not in density]
    if distribution == "uniform":
        density.update({n: target for n in free})
        return density

    raw = {n: raw_score(shapes[n], distribution, erk_power) for n in free}
    budget = target * sum(sizes.values()) - sum(density[n] * sizes[n] for n in density)
    while free:
        denominator = sum(raw[n] * sizes[n] for n in free)
        epsilon = budget / denominator
        if epsilon < 0:
            raise ConfigError(
                f"overrides use more active weights than sparsity={sparsity} allows for all layers together")
        too_dense = [n for n in free if epsilon * raw[n] > 1.0]
        if not too_dense or not redistribute:
            density.update({n: min(1.0, epsilon * raw[n]) for n in free})
            break
        densest = max(too_dense, key=lambda n: raw[n])
        density[densest] = 1.0
        budget -= sizes[densest]
        free.remove(densest)
    return {n: density[n] for n in shapes}


def active_count(density: float, size: int) -> int:
    """Exact number of active weights for a layer: round(d·N), at least 1."""
    return max(1, min(size, int(math.floor(density * size + 0.5))))
