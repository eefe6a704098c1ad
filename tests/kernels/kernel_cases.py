"""Random CSR test cases and float64 dense references, shared by the kernel tests and the Triton check.

Cases cover empty rows, empty columns, a single active weight, zero active weights, 1x1 and odd,
non-square shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# (n_rows, n_cols, nnz, empty_row, empty_col): empty_row/empty_col (or None) are kept free of entries.
CASES = [
    (1, 1, 1, None, None),
    (1, 1, 0, None, None),
    (7, 13, 1, None, None),
    (7, 13, 0, None, None),
    (7, 13, 40, 3, 5),
    (13, 7, 50, 0, 6),
    (129, 65, 900, 128, 0),
]
SMALL_CASES = CASES[:6]  # for the (slow) Triton interpreter
BATCH_SIZES = (1, 3, 17)


@dataclass
class Csr:
    shape: tuple[int, int]
    crow: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    ccol: torch.Tensor  # transposed CSR, built here independently with a stable sort
    row_t: torch.Tensor
    perm_t: torch.Tensor

    def dense(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=torch.float64)
        out[self.row.long(), self.col.long()] = self.values.double()
        return out


def random_csr(n_rows: int, n_cols: int, nnz: int, empty_row: int | None, empty_col: int | None, *, seed: int,
               index_dtype: torch.dtype = torch.int32, dtype: torch.dtype = torch.float64) -> Csr:
    g = torch.Generator().manual_seed(seed)
    allowed = torch.ones(n_rows, n_cols, dtype=torch.bool)
    if empty_row is not None:
        allowed[empty_row] = False
    if empty_col is not None:
        allowed[:, empty_col] = False
    candidates = torch.nonzero(allowed.flatten()).flatten()
    assert nnz <= candidates.numel()
    lin = torch.sort(candidates[torch.randperm(candidates.numel(), generator=g)[:nnz]]).values
    row, col = (lin // n_cols).to(index_dtype), (lin % n_cols).to(index_dtype)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(row.long(), minlength=n_rows).cumsum(0)
    order = torch.sort(col.long(), stable=True).indices
    ccol = torch.zeros(n_cols + 1, dtype=torch.int64)
    ccol[1:] = torch.bincount(col.long(), minlength=n_cols).cumsum(0)
    values = torch.randn(nnz, generator=g, dtype=torch.float64).to(dtype)
    return Csr((n_rows, n_cols), crow.to(index_dtype), row, col, values, ccol.to(index_dtype),
               row[order], order.to(index_dtype))


def dense_fm(n: int, R: int, *, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, R, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def sddmm_reference(m: Csr, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    return (left_fm.double()[m.row.long()] * right_fm.double()[m.col.long()]).sum(1)
