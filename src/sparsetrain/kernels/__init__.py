"""Pure tensor kernels of a compressed layer: SpMM (forward and input gradient), SDDMM, and the index
operations of a topology update (topology.py: sampling, top-k selection, slot merge, transposed CSR).

One dispatcher (backend.py) picks the implementation per call: Triton for CUDA tensors, our compiled
C++/OpenMP kernels for CPU tensors, otherwise the stock-torch formulation (with one loud warning).
None of them ever allocates a dense weight-sized tensor. ``active_backends()`` says which
implementation serves which device; ``SPARSETRAIN_KERNELS=auto|cpp|torch`` forces a choice.
"""
from __future__ import annotations

import torch

from .backend import (
    KernelFallbackWarning,
    KernelUnavailableError,
    active_backends,
    implementation,
)
from . import cpp_ext, torch_ops
from .linear import Transposed, sparse_linear
from .topology import (
    coordinates_to_linear,
    csr_rows,
    csr_linear,
    gather_or_zero,
    linear_index,
    linear_to_csr,
    merge_entries,
    order_check,
    rows_to_crow,
    sample_and_score,
    scatter_permuted,
    select_k,
    sorted_uniform_draws,
    storage_walk,
    transpose_after_merge,
    transpose_blocked,
    transpose_csr,
    unique_difference,
)

__all__ = ["spmm", "to_storage", "spmm_transposed", "sddmm", "linear_grads", "sddmm_coo", "feature_major", "sparse_linear", "active_backends", "rows_to_crow", "transpose_order",
           "KernelUnavailableError", "KernelFallbackWarning",
           # topology operations (topology.py)
           "linear_index", "linear_to_csr", "sorted_uniform_draws", "unique_difference", "select_k", "merge_entries",
           "transpose_csr", "gather_or_zero", "coordinates_to_linear", "order_check", "sample_and_score", "csr_linear", "csr_rows",
           "transpose_blocked", "scatter_permuted", "transpose_after_merge", "storage_walk"]

_INDEX_DTYPES = (torch.int32, torch.int64)


def _check_index(name: str, t: torch.Tensor) -> None:
    if t.ndim != 1 or t.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name} must be a 1-D int32 or int64 tensor, got shape {tuple(t.shape)} dtype {t.dtype}")


def _check_dense(name: str, t: torch.Tensor, rows: int, what: str) -> None:
    if t.ndim != 2 or t.shape[0] != rows:
        raise ValueError(f"{name} must be feature-major with shape ({what}={rows}, R), got {tuple(t.shape)}")


def spmm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense_fm: torch.Tensor,
         n_cols: int, slots: torch.Tensor | None = None,
         walk: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """Feature-major SpMM: (n_rows, R) = CSR(n_rows x n_cols) @ (n_cols, R).

    ``slots``: entry p's value is ``values[slots[p]]`` (row-block value storage, :func:`transpose_blocked`); our
    CPU kernel reads it in place, other backends gather the values into CSR order first. ``walk``: the
    layout's ``storage_walk()`` (with ``slots``): our CPU kernel then walks the values in storage order
    (``cpp_ext.spmm_storage``, the same result); other backends ignore it.
    """
    _check_index("crow", crow)
    _check_index("col", col)
    _check_dense("dense_fm", dense_fm, n_cols, "n_cols")
    if values.shape != col.shape or (slots is not None and slots.shape != col.shape):
        raise ValueError(f"values (and slots) must have the shape of col {tuple(col.shape)}, got "
                         f"{tuple(values.shape)}{'' if slots is None else f' and {tuple(slots.shape)}'}")
    if values.dtype != dense_fm.dtype:
        raise ValueError(f"values dtype {values.dtype} must equal dense_fm dtype {dense_fm.dtype}")
    impl = implementation(dense_fm.device, dense_fm.dtype)
    if slots is None:
        return impl.spmm(crow, col, values, dense_fm, n_cols)
    if impl is cpp_ext:
        if walk is not None:
            pairs, block_rows = _checked_walk(walk, col)
            return cpp_ext.spmm_storage(crow, pairs, values, dense_fm, block_rows)
        return cpp_ext.spmm_permuted(crow, col, values, slots, dense_fm)
    return impl.spmm(crow, col, values.index_select(0, slots), dense_fm, n_cols)


def spmm_transposed(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense_fm: torch.Tensor,
                    n_cols: int, transposed: Transposed) -> torch.Tensor:
    """Feature-major Wᵀ @ dense_fm: (n_cols, R) for W the CSR (crow, col, values) and dense_fm (n_rows, R).

    ``transposed`` = (ccol, row_t, perm_t) is W's transposed CSR (perm_t: the value slot of each entry), or
    a zero-argument callable that returns it (a layout builds it once per topology). Our CPU kernel runs
    the SpMM on the transposed CSR reading each value as ``values[perm_t[j]]``; other backends first gather
    the values into transposed order.
    """
    ccol, row_t, perm_t = _checked_transposed(crow, col, values, dense_fm, n_cols, transposed)
    impl = implementation(dense_fm.device, dense_fm.dtype)
    if impl is cpp_ext:
        return cpp_ext.spmm_permuted(ccol, row_t, values, perm_t, dense_fm)
    return impl.spmm(ccol, row_t, values.index_select(0, perm_t), dense_fm, dense_fm.shape[0])


def linear_grads(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, gy_fm: torch.Tensor,
                 x_fm: torch.Tensor, transposed: Transposed, slots: torch.Tensor | None = None,
                 walk: tuple[torch.Tensor, int] | None = None,
                 input_grad: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Both gradients of y = W x: (Wᵀ gy_fm, gy·xᵀ at W's entries) = (:func:`spmm_transposed`, :func:`sddmm`);
    with ``input_grad=False`` only the second (the first is None).

    Our CPU kernel computes them in one walk of the transposed CSR, gathering each entry's gy row once for
    both; other backends make the two calls. With ``slots`` (row-block value storage: ``perm_t`` then holds
    storage positions) the value gradient comes back in the values' own storage order. With ``walk`` (the
    layout's ``storage_walk()``) our CPU kernel walks the values in storage order instead
    (``cpp_ext.grads_storage``, bitwise the same result); other backends ignore it.
    """
    _check_pair(gy_fm, x_fm)
    impl = implementation(gy_fm.device, gy_fm.dtype)
    if impl is cpp_ext and walk is not None:
        ccol, _, _ = _checked_transposed(crow, col, values, gy_fm, x_fm.shape[0], transposed)
        pairs, block_rows = _checked_walk(walk, col)
        grad_x, grad_values = cpp_ext.grads_storage(crow, pairs, ccol, values, gy_fm, x_fm, block_rows, input_grad)
        return (grad_x if input_grad else None), grad_values
    if not input_grad:  # the transposed CSR is not needed (a first layer never builds it in CSR order)
        return None, to_storage(sddmm(crow, col, gy_fm, x_fm), slots)
    if impl is not cpp_ext:
        return (spmm_transposed(crow, col, values, gy_fm, x_fm.shape[0], transposed),
                to_storage(sddmm(crow, col, gy_fm, x_fm), slots))
    ccol, row_t, perm_t = _checked_transposed(crow, col, values, gy_fm, x_fm.shape[0], transposed)
    return cpp_ext.grads_transposed(ccol, row_t, perm_t, values, gy_fm, x_fm)


def _checked_walk(walk: tuple[torch.Tensor, int], col: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A layout's storage walk (pairs, block_rows), after checking its shape against the CSR."""
    pairs, block_rows = walk
    if pairs.shape != (col.numel(), 2):
        raise ValueError(f"walk must have shape ({col.numel()}, 2), got {tuple(pairs.shape)}")
    return pairs, block_rows


def to_storage(slot_ordered: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
    """A CSR-ordered per-entry tensor in the values' storage order (itself when there are no ``slots``)."""
    return slot_ordered if slots is None else scatter_permuted(slot_ordered, slots)


def sddmm(crow: torch.Tensor, col: torch.Tensor, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    """Sampled dense-dense product at CSR coordinates: out[j] = <left_fm[row_j], right_fm[col_j]>."""
    _check_index("crow", crow)
    _check_index("col", col)
    _check_dense("left_fm", left_fm, crow.numel() - 1, "n_rows")
    _check_pair(left_fm, right_fm)
    return implementation(left_fm.device, left_fm.dtype).sddmm(crow, col, left_fm, right_fm)


def _checked_transposed(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense_fm: torch.Tensor,
                        n_cols: int, transposed: Transposed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transposed CSR (ccol, row_t, perm_t), after checking it and the operands of a Wᵀ product."""
    _check_index("crow", crow)
    _check_index("col", col)
    _check_dense("dense_fm", dense_fm, crow.numel() - 1, "len(crow) - 1")
    if values.shape != col.shape:
        raise ValueError(f"values must have the shape of col {tuple(col.shape)}, got {tuple(values.shape)}")
    if values.dtype != dense_fm.dtype:
        raise ValueError(f"values dtype {values.dtype} must equal dense_fm dtype {dense_fm.dtype}")
    ccol, row_t, perm_t = transposed() if callable(transposed) else transposed
    if row_t.shape != values.shape or perm_t.shape != values.shape or ccol.numel() != n_cols + 1:
        raise ValueError(f"transposed CSR must have len(ccol) = n_cols + 1 = {n_cols + 1} and row_t, perm_t "
                         f"of the length of values ({values.numel()})")
    return ccol, row_t, perm_t


def sddmm_coo(rows: torch.Tensor, cols: torch.Tensor, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    """SDDMM at coordinates sorted row-major (e.g. sorted linear indices of growth candidates)."""
    _check_index("rows", rows)
    _check_index("cols", cols)
    if rows.shape != cols.shape:
        raise ValueError(f"rows and cols must have the same shape, got {tuple(rows.shape)} and {tuple(cols.shape)}")
    if left_fm.ndim != 2:
        raise ValueError(f"left_fm must be feature-major (n_rows, R), got shape {tuple(left_fm.shape)}")
    _check_pair(left_fm, right_fm)
    return implementation(left_fm.device, left_fm.dtype).sddmm_coo(rows, cols, left_fm, right_fm)


def _check_pair(left_fm: torch.Tensor, right_fm: torch.Tensor) -> None:
    if right_fm.ndim != 2 or right_fm.shape[1] != left_fm.shape[1] or right_fm.dtype != left_fm.dtype:
        raise ValueError(f"right_fm must be (n_cols, R={left_fm.shape[1]}) of dtype {left_fm.dtype}, got "
                         f"shape {tuple(right_fm.shape)} dtype {right_fm.dtype}")


def feature_major(t: torch.Tensor) -> torch.Tensor:
    """The contiguous transpose of a 2-D tensor: free when ``t`` already is a transposed contiguous view
    (e.g. the output of a sparse layer), otherwise one copy (our blocked kernel on CPU)."""
    if t.ndim != 2:
        raise ValueError(f"feature_major needs a 2-D tensor, got shape {tuple(t.shape)}")
    if t.t().is_contiguous():
        return t.t()
    impl = implementation(t.device, t.dtype)
    # a dense copy: backends without their own (Triton) use torch's, which is the same operation
    return getattr(impl, "transposed_contiguous", torch_ops.transposed_contiguous)(t)


def transpose_order(col: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Transposed-CSR index of a row-major entry list: (perm, ccol), both of col's dtype.

    ``perm[j]`` is the slot of the j-th entry in column-major order (stable: row order within a column),
    ``ccol`` the n_cols + 1 column pointers. O(nnz) counting sort on CPU; a stable device sort on GPU.
    """
    _check_index("col", col)
    return implementation(col.device, torch.float32).transpose_order(col, n_cols)
