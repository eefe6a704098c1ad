"""bfloat16 operands: every kernel sums in float32 and rounds once, so each result is the float64 dense
reference (of the bfloat16 inputs) rounded to bfloat16, up to one unit in the last place where the float32
sum sits next to a rounding boundary. A kernel that summed in bfloat16 would be off by several units."""
from __future__ import annotations

import pytest
import torch

from sparsetrain import kernels
from sparsetrain.kernels import backend
from kernel_cases import CASES, dense_fm, random_csr, sddmm_reference

BF16 = torch.bfloat16
# R = 1, 5: the scalar path; 32, 128: whole register tiles; 40, 300: a partial tile, several tiles
BATCHES = (1, 5, 32, 40, 128, 300)


@pytest.fixture(params=["torch", "cpp"])
def backend_name(request, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, request.param)
    if request.param == "cpp":
        pytest.importorskip("sparsetrain.kernels.cpp_ext").load()
    return request.param


def assert_rounded_reference(out: torch.Tensor, reference: torch.Tensor) -> None:
    """out (bfloat16) is the float64 reference to within one bfloat16 unit in the last place."""
    assert out.dtype == BF16 and out.shape == reference.shape
    torch.testing.assert_close(out.double(), reference, rtol=2.0**-8, atol=1e-6)
    if reference.numel() >= 100:  # and nearly always exactly the correctly rounded value
        assert (out == reference.to(BF16)).double().mean() >= 0.97


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-nnz{c[2]}" for c in CASES])
def test_bfloat16_kernels_match_the_rounded_float64_reference(backend_name, case, index_dtype):
    for seed, R in enumerate(BATCHES):
        m = random_csr(*case, seed=seed, dtype=BF16, index_dtype=index_dtype)
        x, gy = dense_fm(m.shape[1], R, seed=300 + seed, dtype=BF16), dense_fm(m.shape[0], R, seed=400 + seed, dtype=BF16)
        w = m.dense()
        assert_rounded_reference(kernels.spmm(m.crow, m.col, m.values, x, m.shape[1]), w @ x.double())
        transposed = (m.ccol, m.row_t, m.perm_t)
        assert_rounded_reference(kernels.spmm_transposed(m.crow, m.col, m.values, gy, m.shape[1], transposed),
                                 w.t() @ gy.double())
        grad_x, grad_values = kernels.linear_grads(m.crow, m.col, m.values, gy, x, transposed)
        assert_rounded_reference(grad_x, w.t() @ gy.double())
        assert_rounded_reference(grad_values, sddmm_reference(m, gy, x))
        assert_rounded_reference(kernels.sddmm(m.crow, m.col, gy, x), sddmm_reference(m, gy, x))
        assert_rounded_reference(kernels.sddmm_coo(m.row, m.col, gy, x), sddmm_reference(m, gy, x))


@pytest.mark.parametrize("R", [5, 128])
def test_bfloat16_stores_round_to_nearest_even_like_torch(R):
    """out[i] = x[2i] + x[2i+1] (values 1): the float32 sum is exact, so the result must be exactly torch's
    float32 -> bfloat16 rounding (nearest, ties to even; NaN stays NaN): ties, infinities and NaN
    included, on the register path (R = 128) and the scalar path (R = 5)."""
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    n = 600
    crow = torch.arange(0, 2 * n + 1, 2, dtype=torch.int64)
    col = torch.arange(2 * n, dtype=torch.int64)
    g = torch.Generator().manual_seed(5)
    a = (torch.randn(n, R, generator=g) * torch.exp2(torch.randint(-20, 20, (n, R), generator=g).float())).to(BF16)
    b = (a.float() * torch.exp2(-torch.randint(6, 10, (n, R), generator=g).float())).to(BF16)  # near-ties
    b[0] = (a[0].float() * 2.0**-8).to(BF16)                                              # exact ties
    a[1, :3], b[1, :3] = float("inf"), torch.tensor([1.0, float("-inf"), float("nan")]).to(BF16)
    x = torch.stack((a, b), dim=1).reshape(2 * n, R)
    out = cpp_ext.spmm(crow, col, torch.ones(2 * n, dtype=BF16), x, 2 * n)
    expected = (a.float() + b.float()).to(BF16)
    nan = expected.isnan()  # torch encodes NaN differently in its vector (0xFFFF) and scalar (0x7FC0) paths
    assert torch.equal(out.isnan(), nan) and int(nan.sum()) == 2
    assert torch.equal(out[~nan].view(torch.int16), expected[~nan].view(torch.int16))
    assert out[1, 0] == float("inf")


def test_bfloat16_sparse_linear_trains_with_bfloat16_gradients():
    """The module path: a bfloat16 SparseLinear's output and both gradients are bfloat16 and agree with a
    float64 computation on the same (bfloat16) weights; SGD steps keep the topology."""
    import sparsetrain as st

    layer = st.SparseLinear(300, 200, sparsity=0.9, bias=False, generator=torch.Generator().manual_seed(0)).to(BF16)
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(1)).to(BF16).requires_grad_(True)
    y = layer(x)
    gy = torch.randn(64, 200, generator=torch.Generator().manual_seed(2)).to(BF16)
    y.backward(gy)
    w = layer.layout.to_dense().double()
    assert_rounded_reference(y, x.double() @ w.t())
    assert x.grad.dtype == BF16 and layer.layout.values.grad.dtype == BF16
    torch.testing.assert_close(x.grad.double(), gy.double() @ w, rtol=2.0**-7, atol=1e-5)
    mask = w != 0
    dense_grad = (gy.double().t() @ x.double())[mask]
    order = torch.nonzero(mask)  # row-major, the layout's slot order
    assert order.shape[0] == layer.layout.values.numel()
    torch.testing.assert_close(layer.layout.values.grad.double(), dense_grad, rtol=2.0**-7, atol=1e-5)
    active = layer.layout.linear_indices().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(x.detach()).square().mean().backward()
        opt.step()
    assert torch.equal(layer.layout.linear_indices(), active) and layer.layout.values.dtype == BF16


def test_bfloat16_sparse_conv2d_matches_float64():
    """A bfloat16 SparseConv2d (patches through the same kernels): output and value gradient agree with a
    float64 computation on the same bfloat16 weights and input."""
    import sparsetrain as st

    conv = st.SparseConv2d(3, 8, 3, padding=1, sparsity=0.5, bias=False,
                           generator=torch.Generator().manual_seed(0)).to(BF16)
    x = torch.randn(2, 3, 9, 7, generator=torch.Generator().manual_seed(1)).to(BF16)
    y = conv(x)
    w = conv.layout.to_dense().double().reshape(8, 3, 3, 3)
    reference = torch.nn.functional.conv2d(x.double(), w, padding=1)
    assert y.dtype == BF16
    torch.testing.assert_close(y.double(), reference, rtol=2.0**-8, atol=1e-6)
    y.double().square().sum().backward()
    assert conv.layout.values.grad.dtype == BF16 and torch.isfinite(conv.layout.values.grad.float()).all()


def test_bfloat16_growth_scores_match_float64():
    """GSE's fused candidate sampler on bfloat16 activations: the same candidates as float64 (the sample
    depends on the seed only) and bfloat16-rounded scores."""
    import sparsetrain as st
    from sparsetrain import rng

    pytest.importorskip("sparsetrain.kernels.cpp_ext").load()
    layout = st.SparseLinear(700, 40, sparsity=0.95, generator=rng.generator(0)).layout
    g = torch.Generator().manual_seed(3)
    x, gy = torch.randn(700, 128, generator=g).to(BF16), torch.randn(40, 128, generator=g).to(BF16)
    run = lambda parts: kernels.sample_and_score(layout.crow, layout.col, 700, 5000,  # noqa: E731
                                                 torch.Generator().manual_seed(0), parts, None, None, False)
    c16, col16, s16 = run([(x, gy)])
    c64, col64, s64 = run([(x.double(), gy.double())])
    assert torch.equal(c16, c64) and torch.equal(col16, col64)
    assert_rounded_reference(s16, s64)


def test_bfloat16_walks_refuse_sweeps():
    """A bfloat16 row walk keeps its float32 sums until the row's last entry (between column blocks in a
    scratch of one tile of rows); an L3 sweep would need them for every row, so the kernel refuses it."""
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    m = random_csr(7, 13, 40, 3, 5, seed=1, dtype=BF16)
    x = dense_fm(13, 32, seed=2, dtype=BF16)
    tile, prefetch, block, sweep = cpp_ext.walk_plan(m.crow, x)
    assert (tile, sweep) == (128, 0)
    with pytest.raises(ValueError, match="bfloat16 row walks take sweep = 0, got 5"):
        cpp_ext.load().spmm(m.crow, m.col, m.values, x, None, 128, 0, 0, 5, False)
    with pytest.raises(RuntimeError, match="tile_bytes for this dtype must be at least 128"):
        cpp_ext.load().spmm(m.crow, m.col, m.values, x, None, 64, 0, 0, 0, False)


def test_a_forced_sweep_is_refused_for_bfloat16_by_name(monkeypatch):
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    from sparsetrain.errors import ConfigError

    m = random_csr(7, 13, 40, 3, 5, seed=1, dtype=BF16)
    monkeypatch.setattr(cpp_ext, "SWEEP", "64")
    with pytest.raises(ConfigError, match="SPARSETRAIN_CPU_SWEEP='64': bfloat16 walks are never swept"):
        kernels.spmm(m.crow, m.col, m.values, dense_fm(13, 32, seed=2, dtype=BF16), 13)
    monkeypatch.setattr(cpp_ext, "SWEEP", "0")
    assert kernels.spmm(m.crow, m.col, m.values, dense_fm(13, 32, seed=2, dtype=BF16), 13).dtype == BF16


@pytest.mark.parametrize("block", ["1", "3", "37"])
def test_bfloat16_column_blocked_walks_round_once(monkeypatch, block):
    """Forced column blocks: the float32 sums wait in the thread's scratch between blocks, so the results
    are those of the unblocked walk, bitwise (several tiles of rows, register and scalar paths)."""
    cpp_ext = pytest.importorskip("sparsetrain.kernels.cpp_ext")
    m = random_csr(700, 300, 30000, 3, 7, seed=4, dtype=BF16)
    transposed = (m.ccol, m.row_t, m.perm_t)
    for R in (5, 128, 300):
        x, gy = dense_fm(300, R, seed=5, dtype=BF16), dense_fm(700, R, seed=6, dtype=BF16)
        monkeypatch.setattr(cpp_ext, "COLUMN_BLOCK", "0")
        plain = (kernels.spmm(m.crow, m.col, m.values, x, 300), *kernels.linear_grads(m.crow, m.col, m.values, gy, x, transposed))
        monkeypatch.setattr(cpp_ext, "COLUMN_BLOCK", block)
        blocked = (kernels.spmm(m.crow, m.col, m.values, x, 300), *kernels.linear_grads(m.crow, m.col, m.values, gy, x, transposed))
        for a, b in zip(plain, blocked):
            assert torch.equal(a, b)
        assert_rounded_reference(blocked[0], m.dense() @ x.double())
