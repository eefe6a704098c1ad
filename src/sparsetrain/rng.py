"""Deterministic random generators keyed by (seed, step, layer, ...).

Every random topology decision draws from ``generator(seed, step, layer)`` so that data-parallel ranks
and resumed runs make exactly the same choices (DESIGN rule 2).
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*keys: int) -> int:
    """Mix integer keys into one 63-bit seed (order matters)."""
    h = 0x5EED
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h & ((1 << 63) - 1)


def generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator seeded by the mixed keys, e.g. ``generator(seed, step, layer_index)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*keys))
    return g
