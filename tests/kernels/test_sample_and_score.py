"""The fused growth-candidate kernel (kernels.sample_and_score, C++ only): its sample is what GSE asks for
(gse.md §2.4 step 3, §5 invariant 4), its scores match a float64 dense reference, and its draws follow
the sampler weights and do not depend on the thread count."""
from __future__ import annotations

import math

import pytest
import torch

import sparsetrain as st
from sparsetrain import kernels, rng
from sparsetrain.kernels import backend

pytestmark = pytest.mark.skipif(not backend.active_backends().get("cpu", "").startswith("cpp"),
                                reason="our CPU kernels are not built")


@pytest.fixture(autouse=True)
def _cpp(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")


def _layer(n_out: int, n_in: int, sparsity: float, seed: int = 0, index_dtype=torch.int32):
    layout = st.SparseLinear(n_in, n_out, sparsity=sparsity, generator=rng.generator(seed)).layout
    return layout.crow.to(index_dtype), layout.col.to(index_dtype), layout.linear_indices()


def _parts(n_out: int, n_in: int, widths=(9,), dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n_in, R, generator=g, dtype=dtype), torch.randn(n_out, R, generator=g, dtype=dtype))
            for R in widths]


def _run(crow, col, n_in, m, parts, seed=0, f=None, g=None, absolute=True):
    out = kernels.sample_and_score(crow, col, n_in, m, torch.Generator().manual_seed(seed), parts, f, g, absolute)
    assert out is not None
    return out


def _linear(cand_crow, cand_col, n_in):
    rows = torch.repeat_interleave(torch.arange(cand_crow.numel() - 1), cand_crow.diff())
    return rows * n_in + cand_col.long()


@pytest.mark.parametrize("n_out,n_in,sparsity,widths", [
    (7, 300, 0.9, (9,)), (50, 40, 0.7, (3, 130)), (1, 5, 0.2, (1,)), (33, 5000, 0.99, (200,)), (64, 64, 0.0, (4,)),
])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_candidates_are_sorted_distinct_inactive_and_scored_exactly(n_out, n_in, sparsity, widths, index_dtype):
    crow, col, active = _layer(n_out, n_in, sparsity, index_dtype=index_dtype)
    parts = _parts(n_out, n_in, widths)
    m = math.ceil(1.5 * max(1, active.numel()))
    cand_crow, cand_col, scores = _run(crow, col, n_in, m, parts, absolute=False)
    assert cand_crow.dtype == torch.int64 and cand_col.dtype == torch.int32 and scores.dtype == torch.float64
    lin = _linear(cand_crow, cand_col, n_in)
    assert lin.numel() <= m and bool((lin[1:] > lin[:-1]).all())          # sorted, no duplicates
    assert not set(lin.tolist()) & set(active.tolist())                     # no active position
    assert lin.numel() == 0 or (int(lin[0]) >= 0 and int(lin[-1]) < n_out * n_in)
    dense_grad = sum(gy @ x.t() for x, gy in parts).flatten()              # float64 reference, small shapes only
    assert torch.allclose(scores, dense_grad[lin], rtol=1e-12, atol=1e-12)
    _, _, absolute = _run(crow, col, n_in, m, parts, absolute=True)
    assert torch.equal(absolute, scores.abs())
    if sparsity == 0.0:
        assert lin.numel() == 0                                              # nothing inactive to draw


def test_float32_scores_match_float64_reference():
    crow, col, _ = _layer(40, 700, 0.95)
    parts64 = _parts(40, 700, (128,))
    parts32 = [(x.float(), gy.float()) for x, gy in parts64]
    c64, col64, s64 = _run(crow, col, 700, 5000, parts64)
    c32, col32, s32 = _run(crow, col, 700, 5000, parts32)
    assert torch.equal(c64, c32) and torch.equal(col64, col32)
    assert torch.allclose(s32.double(), s64, rtol=1e-4, atol=1e-4)


def test_sample_depends_on_the_seed_only():
    crow, col, _ = _layer(300, 400, 0.97)
    parts = _parts(300, 400, (4,))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(crow, col, 400, 20_000, parts, seed=5)
        torch.set_num_threads(2)
        two = _run(crow, col, 400, 20_000, parts, seed=5)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    other = _run(crow, col, 400, 20_000, parts, seed=6)
    assert not torch.equal(one[1], other[1])


@pytest.mark.parametrize("n_in", [64, 1 << 20])  # bitmap rows and sorted rows (few draws in a wide row)
def test_uniform_draws_cover_positions_evenly(n_in):
    """No active weights: the candidates are the distinct positions of m uniform draws, so each row and
    each column block gets its share (binomial counts within 6 sigma) and |S| matches its expectation."""
    n_out, m = 32, 40_000
    crow = torch.zeros(n_out + 1, dtype=torch.int64)
    col = torch.empty(0, dtype=torch.int64)
    cand_crow, cand_col, _ = _run(crow, col, n_in, m, _parts(n_out, n_in, (1,)))
    total = n_out * n_in
    expected_distinct = total * (1 - (1 - 1 / total) ** m)
    assert abs(cand_col.numel() - expected_distinct) < 6 * math.sqrt(expected_distinct) + 1
    per_row = cand_crow.diff().double()
    mean = cand_col.numel() / n_out
    assert float((per_row - mean).abs().max()) < 6 * math.sqrt(mean)
    blocks = torch.bincount(cand_col.long() * 8 // n_in, minlength=8).double()
    assert float((blocks - cand_col.numel() / 8).abs().max()) < 6 * math.sqrt(cand_col.numel() / 8)


def test_weighted_draws_follow_the_weights_and_skip_zero_weights():
    n_out, n_in, m = 6, 50, 30_000
    crow = torch.zeros(n_out + 1, dtype=torch.int64)
    col = torch.empty(0, dtype=torch.int64)
    g = torch.tensor([0.0, 1.0, 2.0, 0.0, 4.0, 1.0])        # output units (rows)
    f = torch.zeros(n_in)
    f[10:20] = 1.0
    f[30] = 5.0                                               # input units (columns)
    cand_crow, cand_col, _ = _run(crow, col, n_in, m, _parts(n_out, n_in, (1,)), f=f, g=g)
    rows_drawn = torch.nonzero(cand_crow.diff()).flatten().tolist()
    assert rows_drawn == [1, 2, 4, 5]                        # weight-0 rows never appear
    assert set(cand_col.tolist()) <= set(range(10, 20)) | {30}
    # with m >> positions every allowed position is drawn at least once
    assert cand_col.numel() == 4 * 11
    # frequencies: a small m shows the proportions (rows 1, 2, 4, 5 ~ 1 : 2 : 4 : 1)
    cand_crow, _, _ = _run(crow, col, n_in, 400, _parts(n_out, n_in, (1,)), f=torch.ones(n_in) * (torch.arange(n_in) < 40), g=g)
    counts = cand_crow.diff().double()
    assert counts[4] > counts[2] > counts[1] and counts[0] == counts[3] == 0


def test_empty_and_degenerate_inputs():
    crow, col, _ = _layer(5, 8, 0.5)
    parts = _parts(5, 8, (2,))
    c, cc, s = _run(crow, col, 8, 0, parts)
    assert c.tolist() == [0] * 6 and cc.numel() == 0 and s.numel() == 0
    c, cc, s = _run(torch.zeros(1, dtype=torch.int32), torch.empty(0, dtype=torch.int32), 8, 10,
                    [(torch.randn(8, 2, dtype=torch.float64), torch.randn(0, 2, dtype=torch.float64))])
    assert c.tolist() == [0] and cc.numel() == 0


def test_bad_input_is_rejected_with_the_field_named():
    crow, col, _ = _layer(5, 8, 0.5)
    parts = _parts(5, 8, (2,))
    with pytest.raises(ValueError, match="m must be >= 0"):
        _run(crow, col, 8, -1, parts)
    with pytest.raises(ValueError, match="at least one observed"):
        kernels.sample_and_score(crow, col, 8, 3, torch.Generator(), [])
    with pytest.raises(ValueError, match="must not all be 0"):
        _run(crow, col, 8, 3, parts, f=torch.zeros(8))
    with pytest.raises(ValueError, match="finite and >= 0"):
        _run(crow, col, 8, 3, parts, g=torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0]))
    with pytest.raises(RuntimeError, match="left_fm must be"):
        _run(crow, col, 8, 3, _parts(4, 8, (2,)))


def test_csr_linear_matches_reference():
    g = torch.Generator().manual_seed(0)
    lin = torch.sort(torch.randperm(40 * 70, generator=g)[:900]).values
    crow, col = kernels.linear_to_csr(lin, 40, 70)
    slots = torch.sort(torch.randperm(900, generator=g)[:250]).values
    for mode in ("cpp", "torch"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(backend.ENV_VAR, mode)
            assert torch.equal(kernels.csr_linear(crow, col.int(), slots, 70), lin[slots])
    with pytest.raises(ValueError, match="strictly increasing"):
        kernels.csr_linear(crow, col, torch.tensor([5, 3]), 70)
