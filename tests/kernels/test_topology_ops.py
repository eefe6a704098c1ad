"""Topology operations (kernels/topology.py) on both backends against plain Python / torch references,
including empty inputs, ties, signed zeros, NaN, and bad input."""
from __future__ import annotations

import math

import pytest
import torch

from sparsetrain import kernels
from sparsetrain.kernels import backend, cpp_ext

BACKENDS = ["torch", "cpp"]


@pytest.fixture(params=BACKENDS)
def name(request, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, request.param)
    return request.param


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sorted_unique(n: int, high: int, seed: int) -> torch.Tensor:
    return torch.sort(torch.randperm(high, generator=_gen(seed))[:n]).values


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n", [0, 1, 1000, 70_000])
def test_linear_index_and_csr_round_trip(name, dtype, n):
    shape = (300, 257)
    lin = _sorted_unique(n, shape[0] * shape[1], n)
    row, col = (lin // shape[1]).to(dtype), (lin % shape[1]).to(dtype)
    assert torch.equal(kernels.linear_index(row, col, shape[1]), lin)
    crow, c = kernels.linear_to_csr(lin, *shape)
    assert crow.dtype == c.dtype == torch.int64
    assert torch.equal(c, lin % shape[1])
    expected = torch.zeros(shape[0] + 1, dtype=torch.int64)
    expected[1:] = torch.bincount(lin // shape[1], minlength=shape[0]).cumsum(0)
    assert torch.equal(crow, expected)


def test_linear_to_csr_rejects_unsorted_or_out_of_range(name):
    for bad in (torch.tensor([5, 3]), torch.tensor([0, 12])):
        with pytest.raises(ValueError, match=r"sorted ascending with entries in \[0, n_rows \* n_cols = 12\)"):
            kernels.linear_to_csr(bad, 3, 4)


@pytest.mark.parametrize("total,m", [(1, 0), (1, 5), (7, 1), (1000, 5000), (16384 * 16384, 200_000)])
def test_sorted_uniform_draws_are_sorted_in_range_and_reproducible(name, total, m):
    a = kernels.sorted_uniform_draws(total, m, _gen(3))
    b = kernels.sorted_uniform_draws(total, m, _gen(3))
    assert a.dtype == torch.int64 and a.numel() == m and torch.equal(a, b)
    if m:
        assert int(a[0]) >= 0 and int(a[-1]) < total and bool((a[1:] >= a[:-1]).all())
    if m > 1 and total > 1:
        assert not torch.equal(a, kernels.sorted_uniform_draws(total, m, _gen(4)))


@pytest.mark.parametrize("total,m,n_ex", [(1, 3, 0), (1, 3, 1), (50, 0, 10), (50, 400, 20), (10**6, 100_000, 0),
                                         (10**6, 100_000, 300_000)])
def test_sorted_uniform_draws_with_exclude_equals_unique_difference(name, total, m, n_ex):
    exclude = _sorted_unique(n_ex, total, n_ex)
    got = kernels.sorted_uniform_draws(total, m, _gen(7), exclude=exclude)
    expected = kernels.unique_difference(kernels.sorted_uniform_draws(total, m, _gen(7)), exclude)
    assert torch.equal(got, expected)
    assert got.numel() <= m and bool((got[1:] > got[:-1]).all())


def test_cpp_sorted_uniform_draws_rejects_unsorted_exclude(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    with pytest.raises(ValueError, match="exclude must be sorted ascending"):
        kernels.sorted_uniform_draws(100, 10, _gen(0), exclude=torch.tensor([5, 1]))


def test_sorted_uniform_draws_are_uniform(name):
    """Chi-square over 50 bins (49 dof: 99.9 % quantile ≈ 85) and the duplicate count of m draws from N."""
    total, m = 1000, 200_000
    draws = kernels.sorted_uniform_draws(total, m, _gen(11))
    counts = torch.bincount(draws // 20, minlength=50).double()
    chi2 = float(((counts - m / 50) ** 2 / (m / 50)).sum())
    assert chi2 < 85, chi2
    total, m = 10**6, 10**6  # expected distinct = N(1 - (1 - 1/N)^m) ≈ 632121, sd ≈ 300
    distinct = kernels.unique_difference(kernels.sorted_uniform_draws(total, m, _gen(12)), torch.empty(0, dtype=torch.int64))
    expected = total * (1 - (1 - 1 / total) ** m)
    assert abs(distinct.numel() - expected) < 2000


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("na,nb", [(0, 0), (0, 5), (5, 0), (1, 1), (200, 30), (100_000, 60_000)])
def test_unique_difference_matches_set_semantics(name, dtype, na, nb):
    g = _gen(na + nb)
    a = torch.sort(torch.randint(0, 150_000, (na,), generator=g)).values.to(dtype)
    b = _sorted_unique(nb, 150_000, nb + 1).to(dtype)
    got = kernels.unique_difference(a, b)
    assert got.dtype == dtype
    assert got.tolist() == sorted(set(a.tolist()) - set(b.tolist()))


def test_cpp_unique_difference_rejects_unsorted(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    with pytest.raises(ValueError, match="sorted ascending"):
        kernels.unique_difference(torch.tensor([3, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="sorted ascending"):
        kernels.unique_difference(torch.tensor([1, 3]), torch.tensor([2, 0]))


def _select_reference(scores: torch.Tensor, k: int, largest: bool) -> list[int]:
    """Python: sort positions by (score, position) with NaN above everything; -0.0 == 0.0."""
    vals = [math.inf * 2 if math.isnan(v) else v for v in scores.tolist()]  # inf*2 is inf: handle NaN by rank
    nan = [math.isnan(v) for v in scores.tolist()]
    if largest:
        order = sorted(range(len(vals)), key=lambda i: (not nan[i], -vals[i] if not nan[i] else 0.0, i))
    else:
        order = sorted(range(len(vals)), key=lambda i: (nan[i], vals[i] if not nan[i] else 0.0, i))
    return sorted(order[:k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("largest", [True, False])
def test_select_k_matches_reference_with_ties(name, dtype, largest):
    for seed, n in enumerate((1, 7, 300, 5000)):
        g = _gen(seed)
        scores = (torch.randint(-4, 5, (n,), generator=g).to(dtype) / 2)  # many ties, negatives
        if n > 10:
            scores[3], scores[5] = -0.0, 0.0
            scores[8] = float("nan")
            scores[9], scores[10] = float("inf"), -float("inf")
        for k in {0, 1, n // 3, n // 2, n - 1, n, n + 5}:
            got = kernels.select_k(scores, k, largest)
            assert got.dtype == torch.int64
            assert got.tolist() == _select_reference(scores, min(max(k, 0), n), largest), (n, k)


def test_select_k_on_distinct_random_scores(name):
    scores = torch.rand(200_000, generator=_gen(5))
    for largest in (True, False):
        ref = torch.sort(torch.topk(scores, 43_210, largest=largest).indices).values
        assert torch.equal(kernels.select_k(scores, 43_210, largest), ref)
    assert kernels.select_k(torch.empty(0), 3).numel() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_select_k_absolute_ranks_magnitudes(name, dtype):
    scores = torch.randn(50_000, generator=_gen(8), dtype=dtype)
    scores[:100] = -0.0
    for largest in (True, False):
        for k in (1, 777, 25_000, 49_999):
            assert torch.equal(kernels.select_k(scores, k, largest, absolute=True),
                               kernels.select_k(scores.abs(), k, largest))


@pytest.mark.parametrize("largest", [True, False])
def test_select_k_is_exact_when_its_sample_misleads_it(name, largest):
    """The C++ select brackets the k-th score from a strided sample; scores that differ exactly at the
    sampled positions make the bracket miss on either side, and the result must stay exact."""
    n, sample = 100_000, 1 << 14
    probe = torch.arange(sample, dtype=torch.int64) * n // sample
    for at_probe, elsewhere, k in ((1.0, 0.0, sample + 10), (0.0, 1.0, 50), (1.0, 0.0, 3)):
        scores = torch.full((n,), elsewhere)
        scores[probe] = at_probe
        if not largest:
            scores = -scores
        assert kernels.select_k(scores, k, largest).tolist() == _select_reference(scores, k, largest)


def test_select_k_signed_zero_ties_to_lower_position(name):
    scores = torch.tensor([0.0, -0.0, 0.0, 1.0, -0.0])
    assert kernels.select_k(scores, 3, largest=True).tolist() == [0, 1, 3]
    assert kernels.select_k(scores, 2, largest=False).tolist() == [0, 1]
    assert kernels.select_k(-scores, 2, largest=False).tolist() == [0, 3]


def _merge_reference(lin_old: list[int], drop: list[int], new: list[int]):
    dropped = set(drop)
    kept = [(v, s) for s, v in enumerate(lin_old) if s not in dropped]
    merged = sorted(kept + [(v, -1) for v in new], key=lambda t: (t[0], t[1] < 0))
    return [v for v, _ in merged], [s for _, s in merged]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("nnz,nd,nn", [(0, 0, 0), (0, 0, 4), (5, 5, 0), (5, 2, 3), (3000, 500, 700),
                                       (60_000, 12_000, 12_000)])
def test_merge_entries_matches_reference(name, dtype, nnz, nd, nn):
    n_rows, n_cols = 400, 333
    total = n_rows * n_cols
    perm = torch.randperm(total, generator=_gen(nnz + nn))
    old = torch.sort(perm[:nnz]).values
    new = torch.sort(perm[nnz:nnz + nn]).values
    if nd and nn:  # regrowing a dropped position is allowed
        new = torch.sort(torch.cat((new[1:], old[:1]))).values
        drop = torch.cat((torch.tensor([0]), torch.sort(torch.randperm(nnz - 1, generator=_gen(2))[:nd - 1]).values + 1))
    else:
        drop = torch.sort(torch.randperm(nnz, generator=_gen(2))[:nd]).values
    crow, col = _csr_of(old, n_rows, n_cols, dtype)
    payloads = [torch.randn(nnz, generator=_gen(3)), torch.randn(nnz, generator=_gen(4), dtype=torch.float64),
                torch.randn(nnz, generator=_gen(5)).to(torch.bfloat16), torch.rand(nnz, generator=_gen(6)) < 0.5]
    out_crow, out_col, source, collisions, carried = kernels.merge_entries(crow, col, drop, new, n_cols, payloads)
    assert collisions == 0 and out_crow.dtype == out_col.dtype == source.dtype == dtype
    ref_lin, ref_src = _merge_reference(old.tolist(), drop.tolist(), new.tolist())
    ref_crow, ref_col = _csr_of(torch.tensor(ref_lin, dtype=torch.int64), n_rows, n_cols, dtype)
    assert torch.equal(out_crow, ref_crow) and torch.equal(out_col, ref_col)
    assert source.tolist() == ref_src
    src = torch.tensor(ref_src, dtype=torch.int64)
    for payload, out in zip(payloads, carried, strict=True):  # carried in the merge: payload[source], 0 if new
        expected = torch.zeros(src.numel(), dtype=payload.dtype)
        expected[src >= 0] = payload[src[src >= 0]]
        assert out.dtype == payload.dtype and torch.equal(out, expected)


def _csr_of(lin: torch.Tensor, n_rows: int, n_cols: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(crow, col) of sorted linear indices, built with plain torch."""
    crow = torch.zeros(n_rows + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(lin // n_cols, minlength=n_rows).cumsum(0)
    return crow.to(dtype), (lin % n_cols).to(dtype)


def test_merge_entries_counts_collisions(name):
    crow, col = torch.tensor([0, 2, 3], dtype=torch.int32), torch.tensor([1, 3, 2], dtype=torch.int32)
    collisions = kernels.merge_entries(crow, col, torch.tensor([0]), torch.tensor([1, 3, 6]), 4)[3]
    assert collisions == 2  # slot 0 (lin 1) is dropped, so only lin 3 and 6 collide


def test_cpp_merge_entries_rejects_bad_input(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    crow, col = torch.tensor([0, 1, 2]), torch.tensor([0, 1])
    none = torch.empty(0, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"drop must be strictly increasing slots in \[0, 2\)"):
        kernels.merge_entries(crow, col, torch.tensor([1, 0]), none, 4)
    with pytest.raises(ValueError, match=r"new_lin must be strictly increasing and in \[0, n_rows \* n_cols = 8\)"):
        kernels.merge_entries(crow, col, none, torch.tensor([3, 3]), 4)
    with pytest.raises(ValueError, match=r"new_lin must be strictly increasing and in \[0, n_rows \* n_cols = 8\)"):
        kernels.merge_entries(crow, col, none, torch.tensor([8]), 4)
    with pytest.raises(ValueError, match=r"payloads must be 1-D with one element per entry \(2\)"):
        kernels.merge_entries(crow, col, torch.tensor([0]), torch.tensor([3]), 4, [torch.zeros(3)])
    with pytest.raises(ValueError, match=r"crow must be non-decreasing from 0 to len\(col\) = 2"):
        kernels.merge_entries(torch.tensor([0, 2, 1]), col, none, none, 4)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n_rows,n_cols,nnz", [(1, 1, 0), (7, 13, 40), (99, 5000, 20_000), (3000, 70, 9000)])
def test_transpose_csr_is_a_stable_sort_with_rows(name, dtype, n_rows, n_cols, nnz):
    """Column-major order, rows ascending within a column; empty rows and columns included."""
    lin = _sorted_unique(nnz, n_rows * n_cols, nnz)
    crow, col = _csr_of(lin, n_rows, n_cols, dtype)
    row = (lin // n_cols).to(dtype)
    perm, ccol, row_t = kernels.transpose_csr(crow, col, n_cols)
    order = torch.sort(col.long(), stable=True).indices
    assert perm.dtype == ccol.dtype == row_t.dtype == dtype
    assert torch.equal(perm.long(), order) and torch.equal(row_t, row[order])
    assert torch.equal(ccol.long()[1:], torch.bincount(col.long(), minlength=n_cols).cumsum(0))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n_rows,n_cols,nnz", [(1, 1, 0), (1, 1, 1), (7, 13, 40), (99, 5000, 20_000),
                                               (40, 40_000, 3000)])
def test_cpp_transpose_in_two_passes_equals_one(dtype, n_rows, n_cols, nnz):
    """Wide layers bucket the entries by 2^k columns first, then counting-sort each bucket: the same
    stable column-major order, rows and column pointers as one pass (40000 columns: two passes by default)."""
    lin = _sorted_unique(nnz, n_rows * n_cols, nnz)
    crow, col = _csr_of(lin, n_rows, n_cols, dtype)
    one = cpp_ext.transpose_csr(crow, col, n_cols, bucket_bits=0)
    assert torch.equal(one[0].long(), torch.sort(col.long(), stable=True).indices)
    for bits in (-1, 1, 3, 7, 20):  # 20: one bucket holds every column
        two = cpp_ext.transpose_csr(crow, col, n_cols, bucket_bits=bits)
        assert all(torch.equal(a, b) for a, b in zip(one, two)), bits


def test_cpp_transpose_rejects_bad_bucket_bits():
    crow, col = torch.tensor([0, 2]), torch.tensor([0, 1])
    for bits in (-2, 31):
        with pytest.raises(ValueError, match=rf"bucket_bits must be -1 \(auto\), 0 \(one pass\) or 1..30, got {bits}"):
            cpp_ext.transpose_csr(crow, col, 4, bucket_bits=bits)
    with pytest.raises(ValueError, match=r"col has entries outside \[0, n_cols=1\)"):
        cpp_ext.transpose_csr(crow, col, 1, bucket_bits=3)


def test_cpp_transpose_csr_rejects_bad_row_pointers(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    with pytest.raises(ValueError, match=r"crow must be non-decreasing from 0 to len\(col\) = 3"):
        kernels.transpose_csr(torch.tensor([0, 2, 1]), torch.tensor([0, 1, 2]), 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_gather_or_zero(name, dtype, index_dtype):
    src = (torch.arange(1, 101) * 3).to(dtype)
    index = torch.randint(-1, 100, (5000,), generator=_gen(1)).to(index_dtype)
    got = kernels.gather_or_zero(src, index)
    expected = [0 if i < 0 else float(src[i]) for i in index.tolist()]
    assert got.dtype == dtype and [float(v) for v in got] == expected
    assert kernels.gather_or_zero(src, torch.empty(0, dtype=index_dtype)).numel() == 0


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_coordinates_to_linear_and_order_check(name, dtype):
    coords = torch.tensor([[0, 1], [0, 3], [2, 0]], dtype=dtype)
    lin, in_range, increasing = kernels.coordinates_to_linear(coords, 3, 4)
    assert lin.tolist() == [1, 3, 8] and in_range and increasing
    assert kernels.coordinates_to_linear(coords[[0, 2, 1]], 3, 4)[1:] == (True, False)
    assert kernels.coordinates_to_linear(coords[[0, 0]], 3, 4)[1:] == (True, False)   # duplicate
    assert kernels.coordinates_to_linear(torch.tensor([[0, 4]], dtype=dtype), 3, 4)[1] is False
    assert kernels.coordinates_to_linear(torch.tensor([[-1, 0]], dtype=dtype), 3, 4)[1] is False
    assert kernels.coordinates_to_linear(torch.empty(0, 2, dtype=dtype), 3, 4)[1:] == (True, True)
    assert kernels.order_check(torch.tensor([0, 2, 5], dtype=dtype), 6) == (True, True)
    assert kernels.order_check(torch.tensor([0, 2, 6], dtype=dtype), 6) == (False, True)
    assert kernels.order_check(torch.tensor([2, 2], dtype=dtype), 6) == (True, False)
    assert kernels.order_check(torch.tensor([-1], dtype=dtype), 6) == (False, True)
    assert kernels.order_check(torch.empty(0, dtype=dtype), 0) == (True, True)


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="row must be a 1-D int32 or int64"):
        kernels.linear_index(torch.zeros(3), torch.zeros(3, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="new_lin must be a 1-D int64"):
        kernels.merge_entries(torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
                              torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="sorted_uniform_draws needs total >= 1"):
        kernels.sorted_uniform_draws(0, 3, _gen(0))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n_rows,n", [(0, 0), (5, 0), (1, 7), (50, 3), (3000, 200_000)])
def test_rows_to_crow(name, dtype, n_rows, n):
    """Row pointers of sorted rows: empty rows anywhere (first, last, between), no rows, no entries."""
    rows = torch.sort(torch.randint(0, max(n_rows, 1), (n,), generator=_gen(n))).values.to(dtype)
    crow = kernels.rows_to_crow(rows, n_rows)
    expected = torch.cat((torch.zeros(1, dtype=torch.int64),
                          torch.bincount(rows.long(), minlength=n_rows)[:n_rows].cumsum(0)))
    assert crow.dtype == dtype and torch.equal(crow.long(), expected)


def test_cpp_rows_to_crow_rejects_unsorted_or_out_of_range(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    with pytest.raises(ValueError, match=r"rows must be sorted ascending with entries in \[0, n_rows=3\)"):
        kernels.rows_to_crow(torch.tensor([0, 2, 1]), 3)
    with pytest.raises(ValueError, match=r"rows must be sorted ascending with entries in \[0, n_rows=3\)"):
        kernels.rows_to_crow(torch.tensor([0, 3]), 3)
