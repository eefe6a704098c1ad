"""Sparse kernels written with stock torch sparse ops (the reference fast path).

All dense operands are *feature-major*: a batch of R rows with n features is stored as an (n, R)
contiguous tensor, so one feature of every row is one contiguous vector. Weights are CSR
(row pointers ``crow``, column indices ``col``, ``values``) in row-major slot order.
"""
from __future__ import annotations

import warnings

import torch

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def spmm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense_fm: torch.Tensor,
         n_cols: int) -> torch.Tensor:
    """out_fm = W @ dense_fm with W the (len(crow)-1) x n_cols CSR matrix; dense_fm is (n_cols, R)."""
    n_rows = crow.numel() - 1
    if values.numel() == 0:
        return dense_fm.new_zeros(n_rows, dense_fm.shape[1])
    return torch.sparse.mm(_csr(crow, col, values, (n_rows, n_cols)), dense_fm, reduce="sum")


def sddmm(crow: torch.Tensor, col: torch.Tensor, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    """out[j] = <left_fm[row_j], right_fm[col_j]> for the CSR coordinates (row_j, col_j).

    left_fm is (n_rows, R), right_fm is (n_cols, R); only the sampled entries are computed.
    """
    n_rows, n_cols = crow.numel() - 1, right_fm.shape[0]
    if col.numel() == 0:
        return left_fm.new_zeros(0)
    pattern = _csr(crow, col, left_fm.new_empty(col.numel()), (n_rows, n_cols))
    out = torch.sparse.sampled_addmm(pattern, left_fm, right_fm.t(), beta=0.0, alpha=1.0)
    return out.values()
