"""Row-block layers walked in storage order (cpp_ext.spmm_storage, grads_storage, the layout's storage walk).

Invariants: the walk holds each storage position's (column, row); both kernels match a float64 dense
reference on random shapes (empty rows, a single weight, odd sizes, a partial batch tile, blocks of one
row and blocks larger than the layer) and are bitwise the results of the CSR walk (forward) and of the
transposed walk (backward); a layer walks its storage only where the policy says (float32/float64 blocks
that reuse their gathered rows, or SPARSETRAIN_CPU_STORAGE_WALK); the walk is rebuilt after a topology
change; bad input is refused with a message naming what is wrong.
"""
from __future__ import annotations

import pytest
import torch

from sparsetrain import kernels, rng
from sparsetrain.errors import ConfigError
from sparsetrain.kernels import backend, cpp_ext
from sparsetrain.layout import CompressedLayout, random_linear_indices
from sparsetrain.nn import SparseLinear


def _blocked(n_rows, n_cols, nnz, block_rows, index_dtype=torch.int32, seed=0, empty_rows=()):
    """(crow, col, row, slots, walk) of a random CSR stored in row blocks."""
    lin = random_linear_indices((n_rows, n_cols), nnz, torch.Generator().manual_seed(seed))
    keep = ~torch.isin(lin // n_cols, torch.tensor(list(empty_rows), dtype=torch.long))
    lin = lin[keep]
    row, col = (lin // n_cols).to(index_dtype), (lin % n_cols).to(index_dtype)
    crow = kernels.rows_to_crow(row, n_rows)
    _, _, _, slots = kernels.transpose_blocked(crow, col, n_cols, block_rows)
    return crow, col, row, slots, cpp_ext.storage_walk(crow, col, slots, block_rows)


CASES = [  # (n_rows, n_cols, nnz, block_rows, R, empty rows)
    (37, 23, 300, 3, 37, (5, 6, 7, 8)),
    (1, 1, 1, 1, 1, ()),            # a single active weight
    (45, 70, 630, 4, 130, ()),      # R = 130: a full float32 tile and a partial one
    (16, 9, 40, 64, 33, (0, 15)),   # one block larger than the layer
    (50, 31, 700, 1, 16, (10,)),    # blocks of one row
    (8, 5, 0, 2, 4, ()),            # no active weight
    (600, 500, 150000, 40, 20, (7,)),  # enough work for the thread team (dynamic chunks, column ranges)
]


TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def every_case(test):
    """Run ``test(case, index_dtype, dtype)`` over CASES, both index dtypes and the three value dtypes."""
    for mark in (pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str),
                 pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str),
                 pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-nnz{c[2]}-b{c[3]}-R{c[4]}")):
        test = mark(test)
    return test


def _operands(case, index_dtype, dtype, seed):
    """A random blocked CSR of the case, its values (CSR and storage order) and float64 dense weight."""
    n_rows, n_cols, nnz, block_rows, R, empty = case
    crow, col, row, slots, walk = _blocked(n_rows, n_cols, nnz, block_rows, index_dtype, empty_rows=empty)
    g = torch.Generator().manual_seed(seed)
    csr_values = torch.randn(col.numel(), generator=g).to(dtype)
    dense = torch.zeros(n_rows, n_cols, dtype=torch.float64)
    dense[row.long(), col.long()] = csr_values.double()
    return (crow, col, row, slots, walk), csr_values, kernels.scatter_permuted(csr_values, slots), dense, g


@every_case
def test_spmm_storage_matches_the_dense_reference(case, index_dtype, dtype):
    n_rows, n_cols, _, block_rows, R, _ = case
    (crow, col, _, _, walk), csr_values, stored, dense, g = _operands(case, index_dtype, dtype, seed=1)
    x_fm = torch.randn(n_cols, R, generator=g).to(dtype)
    got = cpp_ext.spmm_storage(crow, walk, stored, x_fm, block_rows)
    expected = dense @ x_fm.double()
    assert got.dtype == dtype and got.shape == (n_rows, R)
    assert torch.allclose(got.double(), expected, atol=TOL[dtype] * max(1.0, expected.abs().max().item()),
                          rtol=TOL[dtype])
    # a row's entries are summed in column order, as by the CSR walk: bitwise its result
    assert torch.equal(got, cpp_ext.spmm(crow, col, csr_values, x_fm, n_cols))


@every_case
def test_grads_storage_match_the_dense_reference(case, index_dtype, dtype):
    n_rows, n_cols, _, block_rows, R, _ = case
    (crow, col, row, slots, walk), _, stored, dense, g = _operands(case, index_dtype, dtype, seed=2)
    perm, ccol, row_t, _ = kernels.transpose_blocked(crow, col, n_cols, block_rows)
    gy_fm, x_fm = torch.randn(n_rows, R, generator=g).to(dtype), torch.randn(n_cols, R, generator=g).to(dtype)
    grad_x, grad_values = cpp_ext.grads_storage(crow, walk, ccol, stored, gy_fm, x_fm, block_rows)
    tol = TOL[dtype]
    expected_x = dense.t() @ gy_fm.double()
    expected_v = (gy_fm.double()[row.long()] * x_fm.double()[col.long()]).sum(1)
    assert grad_x.shape == (n_cols, R) and grad_values.shape == (col.numel(),)
    assert torch.allclose(grad_x.double(), expected_x, atol=tol * max(1.0, expected_x.abs().max().item()), rtol=tol)
    assert torch.allclose(grad_values[slots.long()].double(), expected_v, atol=tol * max(1.0, R), rtol=tol)
    # rows of a column in ascending order, as the transposed walk sums them: bitwise its results
    ref_x, ref_v = kernels.linear_grads(crow, col, stored, gy_fm, x_fm, (ccol, row_t, perm), slots)
    assert torch.equal(grad_x, ref_x) and torch.equal(grad_values, ref_v)
    only_x, only_v = cpp_ext.grads_storage(crow, walk, ccol, stored, gy_fm, x_fm, block_rows, False)
    assert only_x.numel() == 0 and torch.equal(only_v, ref_v)


def test_the_walk_holds_each_storage_positions_coordinates():
    crow, col, row, slots, walk = _blocked(37, 23, 300, 3, empty_rows=(5, 6))
    assert walk.shape == (col.numel(), 2) and walk.dtype == col.dtype
    assert torch.equal(walk[slots.long(), 0], col) and torch.equal(walk[slots.long(), 1], row)


@pytest.mark.parametrize("method", ["columns", "walk"])
@pytest.mark.parametrize("name", ["cpp", "torch"])
def test_the_transposes_write_the_same_walk(monkeypatch, name, method):
    """transpose_blocked / transpose_after_merge with walk=True: the walk storage_walk builds from the slots."""
    monkeypatch.setenv(backend.ENV_VAR, name)
    crow, col, row, slots, walk = _blocked(37, 23, 300, 3, empty_rows=(5, 6))
    *_, slots_t, walk_t = kernels.transpose_blocked(crow, col, 23, 3, method, walk=True)
    assert torch.equal(slots_t, slots) and torch.equal(walk_t, walk)
    assert torch.equal(kernels.storage_walk(crow, col, slots, 3), walk)
    assert len(kernels.transpose_blocked(crow, col, 23, 3, method)) == 4  # no walk unless asked for
    source = torch.arange(col.numel(), dtype=col.dtype)  # a merge that kept every entry
    out = kernels.transpose_after_merge(crow, col, 23, 3, source, slots, [torch.randn(col.numel())], method,
                                        walk=True)
    assert len(out) == 7 and torch.equal(out[3], slots) and torch.equal(out[6], walk)


def _layer(monkeypatch, walk_setting, n=48, sparsity=0.5, value_block="4"):
    monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", value_block)
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", walk_setting)
    return SparseLinear(n, n, sparsity=sparsity, bias=False, generator=rng.generator(0, 2))


def test_the_policy_picks_reusing_float_blocks(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    # blocks of 4 rows at density 0.5 use each gathered row 2 times: enough
    layer = _layer(monkeypatch, "auto")
    walk, block_rows = layer.layout.storage_walk()
    assert block_rows == 4 and walk.shape == (layer.nnz, 2)
    assert layer.layout.storage_walk() is not None and layer.layout.storage_walk()[0] is walk  # cached
    assert layer.layout.storage_walk(torch.bfloat16) is None  # bfloat16 keeps the CSR walks
    assert _layer(monkeypatch, "auto", sparsity=0.75).layout.storage_walk() is None  # 1 use per block
    assert _layer(monkeypatch, "1", sparsity=0.75).layout.storage_walk(torch.bfloat16) is not None  # forced
    assert _layer(monkeypatch, "0").layout.storage_walk() is None
    assert _layer(monkeypatch, "1", value_block="0").layout.storage_walk() is None  # CSR order: nothing to walk
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    assert _layer(monkeypatch, "1").layout.storage_walk() is None  # only our CPU kernels walk it
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", "auto")
    assert cpp_ext.storage_walk_pays(16384, 16384, 5368709, 200, torch.float32)    # 98 %: 4 uses
    assert not cpp_ext.storage_walk_pays(65536, 65536, 64 * 65536, 1024, torch.float32)  # fan-in 64: 1 use
    assert not cpp_ext.storage_walk_pays(16384, 16384, 5368709, 200, torch.bfloat16)


@pytest.mark.parametrize("walk_setting", ["0", "1"])
def test_forward_after_a_topology_change_uses_the_new_walk(monkeypatch, walk_setting):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    layer = _layer(monkeypatch, walk_setting)
    layout = layer.layout
    x = torch.randn(9, 48, generator=torch.Generator().manual_seed(3))
    layer(x)
    old = layout.storage_walk()
    inactive = torch.ones(48 * 48, dtype=torch.bool)
    inactive[layout.linear_indices()] = False
    grow = torch.nonzero(inactive).flatten()[:20]
    layout.replace(torch.arange(0, 40, 2), torch.stack((grow // 48, grow % 48), dim=1))
    new = layout.storage_walk()
    assert (old is None) == (new is None) == (walk_setting == "0")
    if new is not None:
        fresh = cpp_ext.storage_walk(layout.crow, layout.col, layout.slots(), layout.block_rows)
        assert torch.equal(new[0], fresh) and layout.index_bytes() >= fresh.numel() * fresh.element_size()
    expected = x.double() @ layer.dense_weight().double().t()
    assert torch.allclose(layer(x).double(), expected, atol=1e-5)


def test_bad_walks_and_settings_are_refused(monkeypatch):
    crow, col, row, slots, walk = _blocked(37, 23, 300, 3)
    values, x_fm = torch.randn(col.numel()), torch.randn(23, 8)
    bad = walk.clone()
    bad[7, 0] = 23
    with pytest.raises(ValueError, match=r"walk has a column outside \[0, 23\) or a row outside its block"):
        cpp_ext.spmm_storage(crow, bad, values, x_fm, 3)
    bad = walk.clone()
    bad[int(crow[3]), 1] = 0  # an entry of rows 3..5 claims row 0
    with pytest.raises(ValueError, match="or a row outside its block"):
        cpp_ext.spmm_storage(crow, bad, values, x_fm, 3)
    with pytest.raises(ValueError, match="block_rows must be >= 1, got 0"):
        cpp_ext.spmm_storage(crow, walk, values, x_fm, 0)
    with pytest.raises(ValueError, match=r"walk must have shape \(300, 2\), got \(299, 2\)"):
        kernels.spmm(crow, col, values, x_fm, 23, slots, (walk[:-1], 3))
    _, ccol, _, _ = kernels.transpose_blocked(crow, col, 23, 3)
    gy_fm = torch.randn(37, 8)
    bad = walk.clone()
    bad[int(crow[3]), 1] = 0
    with pytest.raises(ValueError, match="grads_storage: walk has a row outside its block or columns not ascending"):
        cpp_ext.grads_storage(crow, bad, ccol, values, gy_fm, x_fm, 3)
    bad = walk.clone()
    first, last = int(crow[0]), int(crow[3]) - 1  # block 0's first and last entries swapped: columns descend
    bad[[first, last]] = bad[[last, first]]
    with pytest.raises(ValueError, match="columns not ascending inside a block"):
        cpp_ext.grads_storage(crow, bad, ccol, values, gy_fm, x_fm, 3)
    with pytest.raises(RuntimeError, match="values, gy_fm and x_fm must have one dtype"):
        cpp_ext.grads_storage(crow, walk, ccol, values.bfloat16(), gy_fm, x_fm, 3)
    with pytest.raises(ValueError, match="slots must map each block of 3 rows into its own CSR range"):
        cpp_ext.storage_walk(crow, col, torch.flip(slots, (0,)).contiguous(), 3)
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", "yes")
    with pytest.raises(ConfigError, match=r"SPARSETRAIN_CPU_STORAGE_WALK='yes': allowed are 'auto', '1' .* or '0'"):
        cpp_ext.storage_walk_pays(10, 10, 50, 2, torch.float32)
