"""The diagonal kernel (methods/dynadiag.md §2.1, §2.6) against float64 dense references."""
from __future__ import annotations

import pytest
import torch

from sparsetrain.kernels.diagonal import diagonal_coordinates, diagonal_count, diagonal_linear

SHAPES = [(8, 8), (12, 4), (4, 12), (6, 9), (9, 6), (1, 5), (5, 1), (1, 1), (7, 13), (33, 10)]


def _dense(offsets, values, weights, m, n):
    rows, cols = diagonal_coordinates(offsets, m, n)
    scaled = values if weights is None else values * weights[:, None]
    return torch.zeros(m, n, dtype=values.dtype).index_put((rows.reshape(-1), cols.reshape(-1)), scaled.reshape(-1),
                                                             accumulate=True)


@pytest.mark.parametrize("m,n", [(8, 8), (12, 4), (4, 12), (6, 9), (768, 3072)])
def test_diagonals_partition_the_weight(m, n):
    p, d = diagonal_count(m, n)
    assert p * d == m * n
    rows, cols = diagonal_coordinates(torch.arange(p), m, n)
    seen = torch.zeros(m * n, dtype=torch.int64).index_add_(0, (rows * n + cols).reshape(-1),
                                                             torch.ones(p * d, dtype=torch.int64))
    assert bool((seen == 1).all())


def test_transpose_of_a_tall_diagonal_is_the_wide_one():
    for j in range(6):
        r, c = diagonal_coordinates(torch.tensor([j]), 9, 6)
        rt, ct = diagonal_coordinates(torch.tensor([j]), 6, 9)
        assert torch.equal(r, ct) and torch.equal(c, rt)


@pytest.fixture(params=["cpp", "torch"])
def kernels(request, monkeypatch):
    """Run a test on our C++ kernels and on the torch composition (the CUDA / fallback path)."""
    monkeypatch.setenv("SPARSETRAIN_KERNELS", request.param)
    return request.param


def _check_against_dense(m, n, k, batch, weighted, seed):
    g = torch.Generator().manual_seed(seed)
    p, d = diagonal_count(m, n)
    offsets = torch.sort(torch.randperm(p, generator=g)[:k]).values
    values = torch.randn(k, d, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(k, generator=g, dtype=torch.float64, requires_grad=True) if weighted else None
    x = torch.randn(batch, n, generator=g, dtype=torch.float64, requires_grad=True)
    y = diagonal_linear(x, offsets, values, weights, m)
    y_ref = x @ _dense(offsets, values, weights, m, n).t()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    inputs = (x, values) + ((weights,) if weighted else ())
    for got, want in zip(torch.autograd.grad(y, inputs, gy), torch.autograd.grad(y_ref, inputs, gy)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("k_kind", ["one", "half", "all"])
@pytest.mark.parametrize("weighted", [True, False])
def test_forward_and_gradients_match_the_dense_product(m, n, k_kind, weighted, kernels):
    p, _ = diagonal_count(m, n)
    k = {"one": 1, "half": max(1, p // 2), "all": p}[k_kind]
    _check_against_dense(m, n, k, 3, weighted, seed=m * 100 + n)


@pytest.mark.parametrize("m,n,k,batch", [(600, 1100, 37, 19), (1100, 600, 37, 19), (1030, 1030, 9, 17),
                                         (520, 2, 2, 9)])
def test_tiles_and_wrapped_windows_match_the_dense_product(m, n, k, batch, kernels):
    """Shapes past the C++ tiles (8 rows × 512 indices), with windows that wrap inside a tile."""
    _check_against_dense(m, n, k, batch, weighted=True, seed=m + n)


@pytest.mark.parametrize("m,n", [(600, 1100), (1100, 600), (2100, 2100)])
def test_float32_tiles_match_a_float64_reference(m, n, kernels):
    """float32 runs the widest register tiles (kSpan 32 under AVX-512); compared with float64 results."""
    g = torch.Generator().manual_seed(m * n)
    p, d = diagonal_count(m, n)
    offsets = torch.sort(torch.randperm(p, generator=g)[:150]).values
    values = torch.randn(150, d, generator=g)
    x, gy = torch.randn(13, n, generator=g), torch.randn(13, m, generator=g)
    outs = []
    for dtype in (torch.float32, torch.float64):
        xv, vv = x.to(dtype).requires_grad_(True), values.to(dtype).requires_grad_(True)
        y = diagonal_linear(xv, offsets, vv, None, m)
        outs.append((y, *torch.autograd.grad(y, (xv, vv), gy.to(dtype))))
    for got, want in zip(*outs):
        got, want = got.detach().double(), want.detach()
        assert float((got - want).abs().max() / want.abs().max()) < 1e-5


def test_our_kernels_serve_cpu_float32():
    from sparsetrain.kernels import cpp_ext
    from sparsetrain.kernels.diagonal import _ours

    assert _ours(torch.zeros(1)) is cpp_ext and _ours(torch.zeros(1, dtype=torch.float64)) is cpp_ext


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_lower_precision_accumulates_in_float32(dtype, tol):
    g = torch.Generator().manual_seed(1)
    m, n, k = 40, 96, 12
    offsets = torch.sort(torch.randperm(96, generator=g)[:k]).values
    values = torch.randn(k, 40, generator=g)
    x = torch.randn(16, n, generator=g)
    y = diagonal_linear(x.to(dtype), offsets, values.to(dtype), None, m)
    assert y.dtype == dtype
    ref = x.to(dtype).double() @ _dense(offsets, values.to(dtype).double(), None, m, n).t()
    assert float((y.double() - ref).abs().max() / ref.abs().max()) < tol


@pytest.mark.parametrize("kwargs,match", [
    ({"x": torch.zeros(3)}, "x must be \\(B, in_features\\)"),
    ({"offsets": torch.tensor([0.0, 1.0])}, "offsets must be a 1-D int32/int64 tensor"),
    ({"offsets": torch.tensor([0, 12])}, "offsets must lie in \\[0, P=12\\)"),
    ({"values": torch.zeros(2, 5)}, "values must have shape \\(K=2, D=4\\)"),
    ({"weights": torch.zeros(3)}, "weights must have shape \\(K=2,\\)"),
])
def test_bad_operands(kwargs, match):
    args = {"x": torch.zeros(2, 12), "offsets": torch.tensor([0, 5]), "values": torch.zeros(2, 4), "weights": None,
            "out_features": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        diagonal_linear(**args)
