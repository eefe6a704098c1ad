"""transpose_order (counting sort) against a stable sort, and the transposed CSR a CompressedLayout builds."""
from __future__ import annotations

import pytest
import torch

from sparsetrain import kernels
from sparsetrain.kernels import backend
from sparsetrain.layout import CompressedLayout


@pytest.mark.parametrize("name", ["torch", "cpp"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n_cols,nnz", [(1, 0), (1, 1), (13, 0), (13, 40), (5000, 20_000)])
def test_transpose_order_is_a_stable_sort(monkeypatch, name, index_dtype, n_cols, nnz):
    monkeypatch.setenv(backend.ENV_VAR, name)
    g = torch.Generator().manual_seed(nnz + n_cols)
    col = torch.randint(0, n_cols, (nnz,), generator=g).to(index_dtype)
    perm, ccol = kernels.transpose_order(col, n_cols)
    assert perm.dtype == ccol.dtype == index_dtype
    assert torch.equal(perm.long(), torch.sort(col.long(), stable=True).indices)
    expected = torch.zeros(n_cols + 1, dtype=torch.int64)
    expected[1:] = torch.bincount(col.long(), minlength=n_cols).cumsum(0)
    assert torch.equal(ccol.long(), expected)


def test_cpp_transpose_order_rejects_out_of_range_columns(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    with pytest.raises(ValueError, match=r"col has entries outside \[0, n_cols=4\)"):
        kernels.transpose_order(torch.tensor([0, 4], dtype=torch.int32), 4)


def test_layout_rebuild_gives_the_transposed_csr():
    layout = CompressedLayout.random((37, 53), 400, generator=torch.Generator().manual_seed(3))
    order = torch.sort(layout.col.long(), stable=True).indices
    assert torch.equal(layout.perm_t.long(), order)
    assert torch.equal(layout.row_t.long(), layout.row.long()[order])
    assert torch.equal(layout.ccol.long()[1:], torch.bincount(layout.col.long(), minlength=53).cumsum(0))
    crow = layout.crow.long()
    assert crow[0] == 0 and torch.equal(crow[1:], torch.bincount(layout.row.long(), minlength=37).cumsum(0))
