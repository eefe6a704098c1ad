"""Growth scores from what a layer's backward already holds: its input h and output gradient δ.

The method arms a layer's ``backward_observer`` with an :class:`Observed`; during backward it receives
the feature-major input ``x_fm`` (n_in, R) and output gradient ``gy_fm`` (n_out, R) and keeps references
to them (x_fm is the tensor backward saved anyway). Several calls (micro-batches, ``score_batches``)
are kept as parts: every quantity below is a sum over rows, so summing over parts equals working on
all rows at once. The connection gradient is ∇θ[b, a] = Σ_i δ[i, b] · h[i, a] (gse.md §2.1).
"""
from __future__ import annotations

import torch

from ..errors import check_choice
from ..kernels import linear_to_csr, sddmm
from .select import top_k

SAMPLERS = ("uniform", "grabo", "graest")


class Observed:
    """The (x_fm, gy_fm) pairs a layer's backward produced since it was armed."""

    def __init__(self) -> None:
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x_fm: torch.Tensor, gy_fm: torch.Tensor) -> None:
        self.parts.append((x_fm.detach(), gy_fm.detach()))

    def __len__(self) -> int:
        return len(self.parts)

    @property
    def rows(self) -> int:
        return sum(x.shape[1] for x, _ in self.parts)


def sampler_weights(parts: list[tuple[torch.Tensor, torch.Tensor]], sampler: str,
                    sign_generator: torch.Generator | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Unnormalised (f over inputs, g over outputs) of gse.md §2.5; ``None`` means uniform.

    grabo: f_a = Σ_i |h[i,a]|, g_b = Σ_i |δ[i,b]|. graest: one random sign s_i per row (the same for h and
    δ), f_a = |Σ_i s_i h[i,a]|, g_b = |Σ_i s_i δ[i,b]|. A distribution summing to 0 becomes uniform.
    """
    check_choice(sampler, "sampler", SAMPLERS)
    if sampler == "uniform":
        return None, None
    f = g = None
    for x_fm, gy_fm in parts:
        if sampler == "grabo":
            pf, pg = x_fm.abs().sum(1), gy_fm.abs().sum(1)
        else:
            signs = torch.randint(0, 2, (x_fm.shape[1],), generator=sign_generator, device=x_fm.device)
            signs = signs.to(x_fm.dtype) * 2 - 1
            pf, pg = x_fm @ signs, gy_fm @ signs.to(gy_fm.dtype)
        f = pf if f is None else f + pf
        g = pg if g is None else g + pg
    if sampler == "graest":
        f, g = f.abs(), g.abs()
    return (f if bool(f.sum() > 0) else None), (g if bool(g.sum() > 0) else None)


def gradient_at(parts: list[tuple[torch.Tensor, torch.Tensor]], lin: torch.Tensor, n_in: int,
                budget_bytes: int = 256 << 20) -> torch.Tensor:
    """∇θ at sorted linear indices ``lin`` by SDDMM; no dense gradient (see :func:`gradient_at_csr`)."""
    if not parts:
        raise RuntimeError("no backward was observed for this layer; nothing to score")
    crow, col = linear_to_csr(lin, parts[0][1].shape[0], n_in)
    return gradient_at_csr(parts, crow, col, budget_bytes)


def gradient_at_csr(parts: list[tuple[torch.Tensor, torch.Tensor]], crow: torch.Tensor, col: torch.Tensor,
                    budget_bytes: int = 256 << 20) -> torch.Tensor:
    """∇θ at the entries of a CSR (row pointers ``crow``, columns ``col``) by SDDMM; no dense gradient.

    The SDDMM runs over row ranges of at most ``budget_bytes`` / 16 entries (column index + partial
    result each), so its temporaries stay bounded; the kernel itself gathers nothing.
    """
    if not parts:
        raise RuntimeError("no backward was observed for this layer; nothing to score")
    n_out = parts[0][1].shape[0]
    chunk = max(1, budget_bytes // 16)
    pieces = []
    r0 = 0
    while r0 < n_out:
        first = int(crow[r0])
        r1 = int(torch.searchsorted(crow, first + chunk, right=True)) - 1
        r1 = min(n_out, max(r1, r0 + 1))
        last = int(crow[r1])
        local_crow, local_col = crow[r0:r1 + 1] - first, col[first:last]
        piece = None
        for x_fm, gy_fm in parts:
            part = sddmm(local_crow, local_col, gy_fm[r0:r1], x_fm)
            piece = part if piece is None else piece.add_(part)
        pieces.append(piece)
        r0 = r1
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def block_rows_for(n_in: int, element_size: int, block_mib: float) -> int:
    """Output rows per dense-gradient block so one block stays within ``block_mib`` MiB (at least 1)."""
    return max(1, int(block_mib * (1 << 20)) // max(1, n_in * element_size))


def blocked_gradient_top_k(parts: list[tuple[torch.Tensor, torch.Tensor]], active_lin: torch.Tensor,
                           shape: tuple[int, int], k: int, block_rows: int) -> torch.Tensor:
    """Sorted linear indices of the ``k`` inactive entries with the largest |∇θ| (RigL growth).

    The dense gradient exists only one block of ``block_rows`` output units at a time; a running top-k
    (kept in ascending index order, so ties go to the lower index) is merged block by block. Peak extra
    memory is O(block + k).
    """
    if not parts:
        raise RuntimeError("no backward was observed for this layer; nothing to score")
    n_out, n_in = shape
    best_val = parts[0][0].new_empty(0)
    best_lin = torch.empty(0, dtype=torch.int64, device=active_lin.device)
    for r0 in range(0, n_out, block_rows):
        r1 = min(n_out, r0 + block_rows)
        block = None
        for x_fm, gy_fm in parts:
            piece = gy_fm[r0:r1] @ x_fm.t()
            block = piece if block is None else block.add_(piece)
        flat = block.abs_().view(-1)
        lo, hi = torch.searchsorted(active_lin, torch.tensor([r0 * n_in, r1 * n_in], device=active_lin.device)).tolist()
        flat[active_lin[lo:hi] - r0 * n_in] = -1.0  # |∇θ| ≥ 0, so -1 marks "not a candidate"
        pick = top_k(flat, k)
        keep = flat[pick] >= 0
        best_val = torch.cat((best_val, flat[pick][keep]))
        best_lin = torch.cat((best_lin, pick[keep] + r0 * n_in))
        if best_val.numel() > k:
            pick = top_k(best_val, k)
            best_val, best_lin = best_val[pick], best_lin[pick]
    return best_lin

