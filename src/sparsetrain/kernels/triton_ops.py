"""Triton GPU kernels: CSR SpMM and SDDMM on feature-major operands, float32 / bfloat16 / float16.

Products accumulate in float32 and are stored in the input dtype. Tested on CPU tensors under the Triton
interpreter (``TRITON_INTERPRET=1`` set before triton is imported); the dispatcher sends CUDA tensors here.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_K = 16  # entries of one row processed together by a SpMM program
BLOCK_E = 32  # entries per SDDMM program


def _block_r(R: int) -> int:
    return max(16, min(128, triton.next_power_of_2(max(R, 1))))


@triton.jit
def _spmm_kernel(crow_ptr, col_ptr, val_ptr, x_ptr, out_ptr, R,
                 BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    # One program: one output row, one block of BLOCK_R batch columns.
    row = tl.program_id(0)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    start = tl.load(crow_ptr + row).to(tl.int64)
    end = tl.load(crow_ptr + row + 1).to(tl.int64)
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(start, end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < end
        cols = tl.load(col_ptr + k, mask=k_ok, other=0).to(tl.int64)
        vals = tl.load(val_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + cols[:, None] * R + r[None, :], mask=k_ok[:, None] & r_ok[None, :], other=0.0)
        acc += tl.sum(vals[:, None] * x.to(tl.float32), axis=0)
    tl.store(out_ptr + row.to(tl.int64) * R + r, acc.to(out_ptr.dtype.element_ty), mask=r_ok)


@triton.jit
def _sddmm_kernel(rows_ptr, cols_ptr, left_ptr, right_ptr, out_ptr, nnz, R,
                  BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr):
    # One program: BLOCK_E entries; the dot product runs over R in blocks of BLOCK_R.
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < nnz
    rows = tl.load(rows_ptr + e, mask=e_ok, other=0).to(tl.int64)
    cols = tl.load(cols_ptr + e, mask=e_ok, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m = e_ok[:, None] & (r < R)[None, :]
        a = tl.load(left_ptr + rows[:, None] * R + r[None, :], mask=m, other=0.0).to(tl.float32)
        b = tl.load(right_ptr + cols[:, None] * R + r[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(a * b, axis=1)
    tl.store(out_ptr + e, acc.to(out_ptr.dtype.element_ty), mask=e_ok)


def _check_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton kernels: {name} dtype must be one of float32, bfloat16, float16; got {t.dtype}")


def spmm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense_fm: torch.Tensor,
         n_cols: int) -> torch.Tensor:
    """(n_rows, R) = CSR(n_rows x n_cols) @ dense_fm (n_cols, R)."""
    _check_dtype(dense_fm, "dense_fm")
    n_rows, R = crow.numel() - 1, dense_fm.shape[1]
    out = torch.empty(n_rows, R, dtype=dense_fm.dtype, device=dense_fm.device)
    if n_rows == 0 or R == 0:
        return out
    block_r = _block_r(R)
    _spmm_kernel[(n_rows, triton.cdiv(R, block_r))](crow.contiguous(), col.contiguous(), values.contiguous(),
                                                    dense_fm.contiguous(), out, R, BLOCK_K=BLOCK_K, BLOCK_R=block_r)
    return out


def sddmm_coo(rows: torch.Tensor, cols: torch.Tensor, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    """out[j] = <left_fm[rows_j], right_fm[cols_j]>."""
    _check_dtype(left_fm, "left_fm")
    nnz, R = cols.numel(), left_fm.shape[1]
    out = torch.empty(nnz, dtype=left_fm.dtype, device=left_fm.device)
    if nnz == 0:
        return out
    _sddmm_kernel[(triton.cdiv(nnz, BLOCK_E),)](rows.contiguous(), cols.contiguous(), left_fm.contiguous(),
                                                right_fm.contiguous(), out, nnz, R, BLOCK_E=BLOCK_E,
                                                BLOCK_R=_block_r(R))
    return out


def sddmm(crow: torch.Tensor, col: torch.Tensor, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    """out[j] = <left_fm[row_j], right_fm[col_j]> at CSR coordinates (row of each entry expanded from crow)."""
    counts = (crow[1:] - crow[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(counts.numel(), device=crow.device, dtype=col.dtype), counts,
                                   output_size=col.numel())
    return sddmm_coo(rows, col, left_fm, right_fm)


def transpose_order(col: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GPU: a stable device sort is already fast, so the torch formulation serves."""
    from .torch_ops import transpose_order as torch_transpose_order

    return torch_transpose_order(col, n_cols)
