"""Inactive positions to grow into, drawn without any dense-sized mask (PERFORMANCE.md "Growth candidates").

Positions are int64 linear indices ``row · n_in + col``. The recipe everywhere: draw (uniform draws come
out sorted), sort otherwise, then one linear merge against the sorted active indices drops duplicates and
active positions (:func:`sparsetrain.kernels.unique_difference`). No ``unique``/``isin`` on large tensors;
nothing of size n_out × n_in unless the layer is at least half dense (then the inactive set is no larger
than the active one and enumerating it is cheapest).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

# sorted_uniform_draws: m uniform draws, already ascending (order statistics from exponential spacings)
from ..kernels import csr_linear, linear_to_csr, sample_and_score, sorted_uniform_draws, unique_difference
from .scores import gradient_at_csr


def drop_duplicates_and_active(sorted_lin: torch.Tensor, active_lin: torch.Tensor) -> torch.Tensor:
    """From sorted positions keep each value once and only those not in the sorted ``active_lin``."""
    return unique_difference(sorted_lin, active_lin)


def inactive_positions(active_lin: torch.Tensor, total: int) -> torch.Tensor:
    """All inactive positions, sorted. O(total): call it only when total ≤ 2 · nnz (density ≥ 0.5)."""
    free = torch.ones(total, dtype=torch.bool, device=active_lin.device)
    free[active_lin] = False
    return torch.nonzero(free).flatten()


def sample_pairs(n_out: int, n_in: int, m: int, generator: torch.Generator, f: torch.Tensor | None = None,
                 g: torch.Tensor | None = None) -> torch.Tensor:
    """``m`` draws b ~ g (output unit), a ~ f (input unit), independent, with replacement, as b·n_in + a.

    ``None`` means uniform. Non-uniform draws use the inverse CDF in float64 (no category limit,
    zero-probability units are never drawn). Draw order: all b, then all a.
    """
    device = f.device if f is not None else (g.device if g is not None else "cpu")
    b = _draw(n_out, m, generator, g, device)
    a = _draw(n_in, m, generator, f, device)
    return b * n_in + a


def _draw(n: int, m: int, generator: torch.Generator, weights: torch.Tensor | None, device) -> torch.Tensor:
    if weights is None:
        return torch.randint(0, n, (m,), generator=generator, device=device)
    cdf = torch.cumsum(weights.to(torch.float64), 0)
    u = torch.rand(m, generator=generator, dtype=torch.float64, device=cdf.device) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=n - 1)


def sampled_candidates(active_lin: torch.Tensor, shape: tuple[int, int], m: int, generator: torch.Generator,
                       f: torch.Tensor | None = None, g: torch.Tensor | None = None) -> torch.Tensor:
    """GSE candidates S: ``m`` sampled pairs, sorted, duplicates and actives dropped; |S| ≤ m (no resampling).

    Uniform f and g make every position equally likely, so the draws come out sorted directly
    (:func:`sorted_uniform_draws`); other samplers draw (b, a) pairs and sort them.
    """
    if f is None and g is None:  # drawn, de-duplicated and merged against the actives in one pass
        return sorted_uniform_draws(shape[0] * shape[1], m, generator, active_lin.device, exclude=active_lin)
    lin = torch.sort(sample_pairs(shape[0], shape[1], m, generator, f, g)).values
    return drop_duplicates_and_active(lin, active_lin)


@dataclass
class Candidates:
    """Growth candidates as a CSR over the layer (row-major, so slot order is linear-index order) with a
    score per candidate."""

    crow: torch.Tensor    # int64 row pointers (n_out + 1,)
    col: torch.Tensor     # columns, ascending within a row
    scores: torch.Tensor  # one per candidate
    n_in: int

    def __len__(self) -> int:
        return self.col.numel()

    def linear(self, slots: torch.Tensor) -> torch.Tensor:
        """Linear positions of the candidates ``slots`` (strictly increasing), ascending."""
        return csr_linear(self.crow, self.col, slots, self.n_in)

    @classmethod
    def from_linear(cls, lin: torch.Tensor, shape: tuple[int, int], parts: list[tuple[torch.Tensor, torch.Tensor]],
                    budget_bytes: int) -> "Candidates":
        """Candidates at sorted linear positions, scored |∇θ| by SDDMM."""
        crow, col = linear_to_csr(lin, *shape)
        return cls(crow, col, gradient_at_csr(parts, crow, col, budget_bytes).abs_(), shape[1])


def scored_candidates(active_csr: tuple[torch.Tensor, torch.Tensor], active_lin: Callable[[], torch.Tensor],
                      shape: tuple[int, int], m: int, generator: torch.Generator,
                      parts: list[tuple[torch.Tensor, torch.Tensor]], f: torch.Tensor | None = None,
                      g: torch.Tensor | None = None, budget_bytes: int = 256 << 20) -> Candidates:
    """GSE candidates S (as :func:`sampled_candidates`) scored |∇θ|.

    On CPU our kernel draws, de-duplicates, drops the actives and scores row by row in one parallel pass
    (:func:`sparsetrain.kernels.sample_and_score`: no global sort, nothing of the layer's dense size);
    elsewhere the torch steps run one after the other (sorted draws, merge, SDDMM in row chunks of
    ``budget_bytes``). The two draw different (equally distributed) samples from the same generator.
    """
    crow, col = active_csr
    fused = sample_and_score(crow, col, shape[1], m, generator, parts, f, g, absolute=True)
    if fused is not None:
        return Candidates(*fused, n_in=shape[1])
    return Candidates.from_linear(sampled_candidates(active_lin(), shape, m, generator, f, g), shape, parts,
                                  budget_bytes)


def uniform_inactive(active_lin: torch.Tensor, total: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Exactly ``k`` distinct inactive positions, uniformly at random, sorted (SET growth).

    Rejection sampling: draw uniformly, keep the distinct inactive ones, repeat until at least k, then
    keep a uniformly random k of them (the set of distinct draws is a uniform subset given its size).
    """
    free = total - active_lin.numel()
    if not 0 <= k <= free:
        raise ValueError(f"cannot grow {k} positions: only {free} of {total} are inactive")
    device = active_lin.device
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    if 2 * active_lin.numel() >= total:
        pool = inactive_positions(active_lin, total)
    else:
        pool = torch.empty(0, dtype=torch.int64, device=device)
        while pool.numel() < k:
            need = k - pool.numel()
            draws = int(math.ceil(need * total / free * 1.25)) + 32
            fresh = torch.randint(0, total, (draws,), generator=generator, device=device)
            pool = drop_duplicates_and_active(torch.sort(torch.cat((pool, fresh))).values, active_lin)
    if pool.numel() > k:
        keep = torch.randperm(pool.numel(), generator=generator, device=device)[:k]
        pool = torch.sort(pool[keep]).values
    return pool
