"""Every available backend of spmm / sddmm / sddmm_coo against float64 dense references."""
from __future__ import annotations

import pytest
import torch

from sparsetrain import kernels
from sparsetrain.kernels import backend, torch_ops
from kernel_cases import BATCH_SIZES, CASES, dense_fm, random_csr, sddmm_reference

BACKENDS = ["torch", "cpp"]


@pytest.fixture(params=BACKENDS)
def backend_name(request, monkeypatch):
    """Force one backend through the public env override, and check it really serves the calls."""
    monkeypatch.setenv(backend.ENV_VAR, request.param)
    expected = torch_ops if request.param == "torch" else pytest.importorskip("sparsetrain.kernels.cpp_ext")
    assert backend.implementation(torch.device("cpu"), torch.float64) is expected
    return request.param


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-nnz{c[2]}" for c in CASES])
def test_spmm_and_transpose_match_dense(backend_name, case, index_dtype):
    for seed, R in enumerate(BATCH_SIZES):
        m = random_csr(*case, seed=seed, index_dtype=index_dtype)
        x = dense_fm(m.shape[1], R, seed=100 + seed)
        out = kernels.spmm(m.crow, m.col, m.values, x, m.shape[1])
        torch.testing.assert_close(out, m.dense() @ x, rtol=1e-12, atol=1e-12)
        gy = dense_fm(m.shape[0], R, seed=200 + seed)
        out_t = kernels.spmm(m.ccol, m.row_t, m.values[m.perm_t.long()], gy, m.shape[0])
        torch.testing.assert_close(out_t, m.dense().t() @ gy, rtol=1e-12, atol=1e-12)
        out_t2 = kernels.spmm_transposed(m.crow, m.col, m.values, gy, m.shape[1], (m.ccol, m.row_t, m.perm_t))
        torch.testing.assert_close(out_t2, m.dense().t() @ gy, rtol=1e-12, atol=1e-12)
        pairs = torch.stack((m.perm_t, m.row_t), dim=1)  # the interleaved form transpose_csr returns on CPU
        out_t3 = kernels.spmm_transposed(m.crow, m.col, m.values, gy, m.shape[1], (m.ccol, pairs[:, 1], pairs[:, 0]))
        torch.testing.assert_close(out_t3, m.dense().t() @ gy, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-nnz{c[2]}" for c in CASES])
def test_linear_grads_match_dense(backend_name, case, index_dtype):
    """Both gradients of y = W x at once (our CPU kernel: one walk of the transposed CSR), with the
    transposed CSR as separate tensors and as the interleaved pairs; R = 300 takes three batch tiles in
    the C++ kernel, the last partial (the value gradient accumulates over tiles)."""
    for seed, R in enumerate((*BATCH_SIZES, 300)):
        m = random_csr(*case, seed=seed, index_dtype=index_dtype)
        x, gy = dense_fm(m.shape[1], R, seed=800 + seed), dense_fm(m.shape[0], R, seed=900 + seed)
        pairs = torch.stack((m.perm_t, m.row_t), dim=1)
        for transposed in ((m.ccol, m.row_t, m.perm_t), (m.ccol, pairs[:, 1], pairs[:, 0])):
            grad_x, grad_values = kernels.linear_grads(m.crow, m.col, m.values, gy, x, transposed)
            torch.testing.assert_close(grad_x, m.dense().t() @ gy, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(grad_values, sddmm_reference(m, gy, x), rtol=1e-12, atol=1e-12)


def test_cpp_linear_grads_equal_the_separate_kernels(monkeypatch):
    """The fused walk adds in the order of the two separate kernels: bitwise equal results (float32), on the
    multi-threaded path, with a forced column block."""
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    m = random_csr(700, 500, 60000, 3, 7, seed=31, dtype=torch.float32)
    x, gy = dense_fm(500, 128, seed=32, dtype=torch.float32), dense_fm(700, 128, seed=33, dtype=torch.float32)
    for block in ("auto", "37"):
        monkeypatch.setattr(cpp_ext, "COLUMN_BLOCK", block)
        grad_x, grad_values = cpp_ext.grads_transposed(m.ccol, m.row_t, m.perm_t, m.values, gy, x)
        assert torch.equal(grad_x, cpp_ext.spmm_permuted(m.ccol, m.row_t, m.values, m.perm_t, gy))
        assert torch.equal(grad_values, cpp_ext.sddmm(m.crow, m.col, gy, x))


def test_spmm_transposed_parallel_path_matches_dense(backend_name):
    """Large enough for the multi-threaded scatter with per-thread buffers and their reduction."""
    m = random_csr(700, 500, 60000, 3, 7, seed=5)
    gy = dense_fm(700, 64, seed=6)
    out = kernels.spmm_transposed(m.crow, m.col, m.values, gy, 500, (m.ccol, m.row_t, m.perm_t))
    torch.testing.assert_close(out, m.dense().t() @ gy, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-nnz{c[2]}" for c in CASES])
def test_sddmm_csr_and_coo_match_dense(backend_name, case, index_dtype):
    for seed, R in enumerate(BATCH_SIZES):
        m = random_csr(*case, seed=seed, index_dtype=index_dtype)
        left, right = dense_fm(m.shape[0], R, seed=300 + seed), dense_fm(m.shape[1], R, seed=400 + seed)
        expected = sddmm_reference(m, left, right)
        torch.testing.assert_close(kernels.sddmm(m.crow, m.col, left, right), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(kernels.sddmm_coo(m.row, m.col, left, right), expected, rtol=1e-12, atol=1e-12)


def test_float32_large_shape_agrees_with_float64(backend_name):
    m = random_csr(512, 768, 40_000, None, None, seed=7, dtype=torch.float32)
    x, gy = dense_fm(768, 64, seed=8, dtype=torch.float32), dense_fm(512, 64, seed=9, dtype=torch.float32)
    dense = m.dense()
    torch.testing.assert_close(kernels.spmm(m.crow, m.col, m.values, x, 768).double(), dense @ x.double(),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kernels.sddmm(m.crow, m.col, gy, x).double(), sddmm_reference(m, gy, x),
                               rtol=1e-4, atol=1e-4)


def test_wide_batch_uses_several_tiles(backend_name):
    """R = 300 float32 (1200 bytes) needs three 512-byte tiles in the C++ kernels, the last one partial."""
    m = random_csr(33, 47, 300, 2, 3, seed=11, dtype=torch.float32)
    x, gy = dense_fm(47, 300, seed=12, dtype=torch.float32), dense_fm(33, 300, seed=13, dtype=torch.float32)
    torch.testing.assert_close(kernels.spmm(m.crow, m.col, m.values, x, 47).double(), m.dense() @ x.double(),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernels.sddmm(m.crow, m.col, gy, x).double(), sddmm_reference(m, gy, x),
                               rtol=1e-5, atol=1e-5)


def test_sparse_linear_gradcheck(backend_name):
    m = random_csr(9, 11, 30, 4, 2, seed=21)
    values = m.values.clone().requires_grad_(True)
    x = dense_fm(5, 11, seed=22).requires_grad_(True)  # (R, n_in): R=5 batch rows
    seen = []

    def fn(x, values):
        return kernels.sparse_linear(x, values, m.crow, m.col, (m.ccol, m.row_t, m.perm_t), 11,
                                     lambda x_fm, gy_fm: seen.append((x_fm.shape, gy_fm.shape)))

    torch.testing.assert_close(fn(x, values), x @ m.dense().t())
    assert torch.autograd.gradcheck(fn, (x, values))
    assert seen and seen[0] == ((11, 5), (9, 5))


def test_bad_arguments_name_the_field():
    m = random_csr(7, 13, 10, None, None, seed=1)
    with pytest.raises(ValueError, match=r"dense_fm must be feature-major with shape \(n_cols=13"):
        kernels.spmm(m.crow, m.col, m.values, torch.zeros(12, 3, dtype=torch.float64), 13)
    with pytest.raises(ValueError, match="col must be a 1-D int32 or int64"):
        kernels.spmm(m.crow, m.col.float(), m.values, torch.zeros(13, 3, dtype=torch.float64), 13)
    with pytest.raises(ValueError, match="right_fm must be"):
        kernels.sddmm(m.crow, m.col, torch.zeros(7, 3, dtype=torch.float64), torch.zeros(13, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="values dtype"):
        kernels.spmm(m.crow, m.col, m.values.float(), torch.zeros(13, 3, dtype=torch.float64), 13)
    transposed = (m.ccol, m.row_t, m.perm_t)
    with pytest.raises(ValueError, match=r"right_fm must be \(n_cols, R=3\)"):
        kernels.linear_grads(m.crow, m.col, m.values, torch.zeros(7, 3, dtype=torch.float64),
                             torch.zeros(13, 2, dtype=torch.float64), transposed)
    with pytest.raises(ValueError, match=r"dense_fm must be feature-major with shape \(len\(crow\) - 1=7"):
        kernels.linear_grads(m.crow, m.col, m.values, torch.zeros(6, 3, dtype=torch.float64),
                             torch.zeros(13, 3, dtype=torch.float64), transposed)
    with pytest.raises(ValueError, match=r"transposed CSR must have len\(ccol\) = n_cols \+ 1 = 13"):
        kernels.linear_grads(m.crow, m.col, m.values, torch.zeros(7, 3, dtype=torch.float64),
                             torch.zeros(12, 3, dtype=torch.float64), transposed)


def test_cpp_spmm_permuted_reads_values_through_perm(monkeypatch):
    """The input-gradient kernel: SpMM on the transposed CSR with values read in place through perm_t."""
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    for seed, (case, R) in enumerate((c, r) for c in CASES for r in BATCH_SIZES):
        m = random_csr(*case, seed=seed)
        gy = dense_fm(m.shape[0], R, seed=700 + seed)
        out = cpp_ext.spmm_permuted(m.ccol, m.row_t, m.values, m.perm_t, gy)
        torch.testing.assert_close(out, m.dense().t() @ gy, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="perm must be 1-D contiguous, with col's length"):
        cpp_ext.spmm_permuted(m.ccol, m.row_t, m.values, m.perm_t[:-1], gy)


@pytest.mark.parametrize("block, sweep", [("1", "0"), ("3", "0"), ("37", "0"), ("0", "1"), ("0", "29"),
                                          ("3", "7"), ("37", "100")])
def test_cpp_column_blocked_walk_matches_dense(monkeypatch, block, sweep):
    """Forced column blocks (for_row_segments) and L3 sweeps (passes over all rows, for_row_chunks), alone
    and nested: every case, several batch widths (a partial tile, and more than one tile, included), more
    rows than one row tile, and the prefetch path switched on where no sweep turns it off."""
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    monkeypatch.setattr(cpp_ext, "COLUMN_BLOCK", block)
    monkeypatch.setattr(cpp_ext, "SWEEP", sweep)
    monkeypatch.setattr(cpp_ext, "L3_BYTES", 0)  # prefetch on for every size
    cases = [*CASES, (700, 500, 60000, 3, 7)]
    for seed, (case, R) in enumerate((c, r) for c in cases for r in (1, 17, 300)):
        m = random_csr(*case, seed=seed)
        x, gy = dense_fm(m.shape[1], R, seed=500 + seed), dense_fm(m.shape[0], R, seed=600 + seed)
        dense = m.dense()
        torch.testing.assert_close(kernels.spmm(m.crow, m.col, m.values, x, m.shape[1]), dense @ x,
                                   rtol=1e-12, atol=1e-12)
        out_t = kernels.spmm_transposed(m.crow, m.col, m.values, gy, m.shape[1], (m.ccol, m.row_t, m.perm_t))
        torch.testing.assert_close(out_t, dense.t() @ gy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(kernels.sddmm(m.crow, m.col, gy, x), sddmm_reference(m, gy, x),
                                   rtol=1e-12, atol=1e-12)
        grad_x, grad_values = kernels.linear_grads(m.crow, m.col, m.values, gy, x, (m.ccol, m.row_t, m.perm_t))
        torch.testing.assert_close(grad_x, dense.t() @ gy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_values, sddmm_reference(m, gy, x), rtol=1e-12, atol=1e-12)


def test_cpp_column_block_policy():
    """Blocks only when rows are long enough and a block's slice of the gathered operand fits L2."""
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    n = 16384
    l2 = cpp_ext.L2_BYTES
    long_rows = cpp_ext.column_block(n, 4 * cpp_ext.MIN_SEGMENT * 64, 512)
    if n * 512 > l2:  # blocked, and one block's slice (long_rows rows of 512 bytes) fits L2
        assert 0 < long_rows < n and long_rows * 512 <= l2
    assert cpp_ext.column_block(n, cpp_ext.MIN_SEGMENT, 512) == 0  # one segment per row at most
    assert cpp_ext.column_block(64, 4096, 512) == 0  # the whole operand fits half of L2


def test_cpp_sweep_policy():
    """L3 sweeps only beyond half of L3: passes whose slice takes a quarter of L3, else half of L3, while
    rows keep 16 entries per pass, else none; a sweep turns the prefetch off; the permuted walk (input
    gradient) sweeps only when forced."""
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    quarter, half = cpp_ext.L3_BYTES // 4 // 512, cpp_ext.L3_BYTES // 2 // 512  # columns of 512-byte rows
    crow_of = lambda n_rows, fan: torch.arange(0, (n_rows + 1) * fan, fan, dtype=torch.int64)  # noqa: E731
    assert cpp_ext.sweep_columns(half, 10**6, 512) == 0  # the operand fits half of L3: one pass
    n = 8 * half  # 4x L3: 16 quarter passes or 8 half passes
    assert cpp_ext.sweep_columns(n, 16 * 16, 512) == quarter
    assert cpp_ext.sweep_columns(n, 16 * 16 - 1, 512) == half
    assert cpp_ext.sweep_columns(n, 16 * 8, 512) == half
    assert cpp_ext.sweep_columns(n, 16 * 8 - 1, 512) == 0
    assert cpp_ext.sweep_columns(n, 16 * 16, 512, permuted=True) == 0  # values read through a permutation
    big = torch.zeros(n, 128)  # the gathered operand, 512-byte rows
    tile, prefetch, _, sweep = cpp_ext.walk_plan(crow_of(100, 128), big)
    assert (tile, prefetch, sweep) == (512, 0, half)
    assert cpp_ext.walk_plan(crow_of(100, 64), big)[1:] == (cpp_ext.PREFETCH, 0, 0)  # 8 entries per pass: none
    _, prefetch, _, sweep = cpp_ext.walk_plan(crow_of(100, 1), big)
    assert (prefetch, sweep) == (cpp_ext.PREFETCH, 0)
    assert cpp_ext.walk_plan(crow_of(100, 64), big, permuted=True)[1:] == (cpp_ext.PREFETCH, 0, 0)
    assert cpp_ext.mean_fan(crow_of(100, 64)) == 64 and cpp_ext.mean_fan(torch.zeros(1, dtype=torch.int64)) == 0


def test_feature_major_copies_once_or_not_at_all(backend_name):
    x = dense_fm(37, 300, seed=30, dtype=torch.float32)  # (R=37, n=300) batch-major
    fm = kernels.feature_major(x)
    assert fm.is_contiguous() and torch.equal(fm, x.t())
    assert kernels.feature_major(fm.t()).data_ptr() == fm.data_ptr()  # a transposed view: no copy
    with pytest.raises(ValueError, match="feature_major needs a 2-D tensor"):
        kernels.feature_major(x.reshape(-1))


def test_leaf_input_gets_a_batch_major_gradient(backend_name):
    """A batch-major leaf input gets a contiguous gradient (autograd would otherwise copy it once more)."""
    m = random_csr(9, 11, 30, 4, 2, seed=31)
    x = dense_fm(5, 11, seed=32).requires_grad_(True)
    kernels.sparse_linear(x, m.values, m.crow, m.col, (m.ccol, m.row_t, m.perm_t), 11).sum().backward()
    assert x.grad.is_contiguous()
    torch.testing.assert_close(x.grad, torch.ones(5, 9, dtype=torch.float64) @ m.dense(), rtol=1e-12, atol=1e-12)


def test_sparse_linear_module_hands_a_leaf_input_our_gradient_without_a_copy(monkeypatch):
    """SparseLinear passes a 2-D input as itself (a reshaped view would hide that it is a leaf): autograd then
    keeps the batch-major gradient our transpose made instead of copying a transposed view into x.grad."""
    from sparsetrain.nn import SparseLinear

    made = []
    original = kernels.feature_major

    def recording(t):
        out = original(t)
        made.append(out.data_ptr())
        return out

    monkeypatch.setattr(kernels, "feature_major", recording)
    layer = SparseLinear(40, 24, sparsity=0.7, bias=False, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 40, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.is_contiguous() and x.grad.data_ptr() in made
    torch.testing.assert_close(x.grad, torch.ones(6, 24) @ layer.layout.to_dense(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,cols", [(16, 16), (128, 1024), (1024, 128), (128, 4000), (4000, 128), (33, 47),
                                       (17, 300), (300, 17), (15, 15), (1, 70), (70, 1), (100, 300), (40, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("stream", [False, True])
def test_cpp_transpose_is_exact_on_blocks_edges_and_strides(rows, cols, dtype, stream):
    """Register blocks (AVX-512 float32 and bfloat16; bfloat16 streamed in whole lines from bands of 32 rows,
    with leftover rows and unaligned lines), the tile path (power-of-two output rows, float64, no AVX-512)
    and the edge strips, with and without non-temporal stores: bitwise the torch transpose."""
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * 1000 + cols)).to(dtype)
    out = cpp_ext.load().transpose(x, stream)
    assert out.shape == (cols, rows) and out.is_contiguous() and torch.equal(out, x.t())


def test_bad_walk_settings_name_the_variable(monkeypatch):
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    from sparsetrain.errors import ConfigError

    monkeypatch.setattr(cpp_ext, "COLUMN_BLOCK", "big")
    with pytest.raises(ConfigError, match="SPARSETRAIN_CPU_COLUMN_BLOCK='big': allowed are 'auto' or a number"):
        cpp_ext.column_block(100, 5, 512)
    monkeypatch.setattr(cpp_ext, "SWEEP", "-3")
    with pytest.raises(ConfigError, match="SPARSETRAIN_CPU_SWEEP='-3': allowed are 'auto' or a number of columns"):
        cpp_ext.sweep_columns(100, 5, 512)
