"""The diagonal kernel of a DynaDiag layer (methods/dynadiag.md §2.1, §2.6): y = x · Wᵀ with W made of K
wrap-around diagonals, and its backward, never forming the M × N weight.

Geometry: P = max(M, N) candidate diagonals of length D = min(M, N). Write the long side as the *wrapped*
side (size P) and the short one as the *straight* side (size D). Diagonal j pairs straight index t with
wrapped index (t + j) mod P. A wide layer (M < N) wraps its input, a tall one (M ≥ N) its output, so the
whole layer is three primitives on windows of the wrapped side:

- ``gather``:  out[b, t]           = Σ_j w[j, t] · z[b, (t + j) mod P]   (wide forward, tall input grad)
- ``scatter``: out[b, (t + j) mod P] += w[j, t] · u[b, t]                (tall forward, wide input grad)
- ``correlate``: c[j, t]           = Σ_b u[b, t] · z[b, (t + j) mod P]   (the value gradient, both)

Each costs B·K·D multiply-adds. The wrap is handled by padding the wrapped side with its first D − 1
entries, so every diagonal's window is a contiguous slice (a view, no gather); the work runs diagonal by
diagonal with in-place multiply-adds, so no temporary larger than one (B, D) product exists. Half
precision inputs are computed in float32 and rounded once.

On CPU our C++ kernels (cpu_kernels.cpp, "Diagonal layers") serve the three primitives: tiles of 8 batch
rows (or diagonals) × 512 straight indices, every inner loop a contiguous multiply-add split in two where
the window wraps, no padded copy. The torch composition below serves CUDA tensors and
``SPARSETRAIN_KERNELS=torch``; the dispatch follows :mod:`.backend` like every other kernel.
"""
from __future__ import annotations

import torch

from . import backend, torch_ops

__all__ = ["diagonal_linear", "diagonal_coordinates", "diagonal_count"]


def diagonal_count(out_features: int, in_features: int) -> tuple[int, int]:
    """(P, D): the number of candidate diagonals and their length."""
    return max(out_features, in_features), min(out_features, in_features)


def diagonal_coordinates(offsets: torch.Tensor, out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols), each (K, D), of the entries of the diagonals ``offsets`` (§2.1)."""
    p, d = diagonal_count(out_features, in_features)
    t = torch.arange(d, device=offsets.device)
    wrapped = (offsets.long()[:, None] + t[None, :]) % p
    straight = t[None, :].expand_as(wrapped)
    return (wrapped, straight) if out_features >= in_features else (straight, wrapped)


def _padded(z: torch.Tensor, d: int) -> torch.Tensor:
    """z with its first d − 1 columns appended, so window j is columns [j, j + d)."""
    return torch.cat((z, z[:, :d - 1]), 1) if d > 1 else z


def _gather(z: torch.Tensor, offsets: list[int], w: torch.Tensor) -> torch.Tensor:
    d = w.shape[1]
    zz = _padded(z, d)
    out = z.new_zeros(z.shape[0], d)
    for row, j in enumerate(offsets):
        out.addcmul_(zz[:, j:j + d], w[row])
    return out


def _scatter(u: torch.Tensor, offsets: list[int], w: torch.Tensor, p: int) -> torch.Tensor:
    d = w.shape[1]
    out = u.new_zeros(u.shape[0], p + d - 1)
    for row, j in enumerate(offsets):
        out[:, j:j + d].addcmul_(u, w[row])
    folded = out[:, :p].clone()
    folded[:, :d - 1] += out[:, p:]
    return folded


def _correlate(z: torch.Tensor, u: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    d = u.shape[1]
    zz = _padded(z, d)
    out = u.new_empty(len(offsets), d)
    for row, j in enumerate(offsets):
        torch.sum(zz[:, j:j + d] * u, 0, out=out[row])
    return out


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _ours(t: torch.Tensor):
    """cpp_ext when our CPU kernels serve this (compute-dtype) tensor, else None (the torch composition)."""
    if t.device.type != "cpu":
        return None
    impl = backend.implementation(t.device, t.dtype)
    return None if impl is torch_ops else impl


def gather(z: torch.Tensor, offsets: torch.Tensor, js: list[int], w: torch.Tensor) -> torch.Tensor:
    ours = _ours(z)
    return ours.diag_gather(z, offsets, w) if ours is not None else _gather(z, js, w)


def scatter(u: torch.Tensor, offsets: torch.Tensor, js: list[int], w: torch.Tensor, p: int) -> torch.Tensor:
    ours = _ours(u)
    return ours.diag_scatter(u, offsets, w, p) if ours is not None else _scatter(u, js, w, p)


def correlate(z: torch.Tensor, u: torch.Tensor, offsets: torch.Tensor, js: list[int]) -> torch.Tensor:
    ours = _ours(z)
    return ours.diag_correlate(z, u, offsets) if ours is not None else _correlate(z, u, js)


class _DiagonalLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offsets, values, weights, out_features):
        n = x.shape[1]
        p, _ = diagonal_count(out_features, n)
        dtype = _compute_dtype(x.dtype)
        xc, vc = x.to(dtype), values.to(dtype)
        wc = vc if weights is None else vc * weights.to(dtype)[:, None]
        js = offsets.tolist()
        y = gather(xc, offsets, js, wc) if out_features < n else scatter(xc, offsets, js, wc, p)
        ctx.save_for_backward(x, offsets, values, weights)
        ctx.out_features, ctx.js = out_features, js
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, offsets, values, weights = ctx.saved_tensors
        m, n, js = ctx.out_features, x.shape[1], ctx.js
        p, _ = diagonal_count(m, n)
        dtype = _compute_dtype(x.dtype)
        xc, vc, gyc = x.to(dtype), values.to(dtype), gy.to(dtype)
        wc = vc if weights is None else vc * weights.to(dtype)[:, None]
        wide = m < n
        gx = gv = gw = None
        if ctx.needs_input_grad[0]:
            gx = (scatter(gyc, offsets, js, wc, p) if wide else gather(gyc, offsets, js, wc)).to(x.dtype)
        if ctx.needs_input_grad[2] or (weights is not None and ctx.needs_input_grad[3]):
            corr = correlate(xc, gyc, offsets, js) if wide else correlate(gyc, xc, offsets, js)
            if ctx.needs_input_grad[2]:
                gv = (corr if weights is None else corr * weights.to(dtype)[:, None]).to(values.dtype)
            if weights is not None and ctx.needs_input_grad[3]:
                gw = (corr * vc).sum(1).to(weights.dtype)
        return gx, None, gv, gw, None


def diagonal_linear(x: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor, weights: torch.Tensor | None,
                    out_features: int) -> torch.Tensor:
    """y = x · Wᵀ for W = Σ_k weights[k] · (diagonal ``offsets[k]`` holding ``values[k]``); x is (B, N).

    ``weights`` (K,) scale whole diagonals (DynaDiag's α̃; ``None`` means 1). Gradients flow to x, values
    and weights. Nothing of size out_features × N is allocated.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (B, in_features), got shape {tuple(x.shape)}")
    n = x.shape[1]
    p, d = diagonal_count(out_features, n)
    if offsets.ndim != 1 or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"offsets must be a 1-D int32/int64 tensor, got shape {tuple(offsets.shape)} {offsets.dtype}")
    if values.shape != (offsets.numel(), d):
        raise ValueError(f"values must have shape (K={offsets.numel()}, D={d}), got {tuple(values.shape)}")
    if weights is not None and weights.shape != (offsets.numel(),):
        raise ValueError(f"weights must have shape (K={offsets.numel()},), got {tuple(weights.shape)}")
    if offsets.numel() and not (0 <= int(offsets.min()) and int(offsets.max()) < p):
        raise ValueError(f"offsets must lie in [0, P={p}), got min {int(offsets.min())} max {int(offsets.max())}")
    return _DiagonalLinear.apply(x, offsets, values, weights, out_features)
