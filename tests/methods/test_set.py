"""SET: uniform growth among inactive positions by rejection sampling, magnitude and sign-split pruning."""
from __future__ import annotations

import torch

from sparsetrain import SparseLinear, methods, rng
from sparsetrain.methods.candidates import uniform_inactive
from sparsetrain.methods.base import Layer


def test_uniform_inactive_is_exact_distinct_and_inactive():
    active = torch.sort(torch.randperm(1000, generator=rng.generator(1))[:300]).values
    for k in (0, 1, 50, 700):
        got = uniform_inactive(active, 1000, k, rng.generator(2, k))
        assert got.numel() == k and bool((got[1:] > got[:-1]).all())
        assert not bool(torch.isin(got, active).any())
    dense = torch.arange(900)  # density ≥ 0.5 enumerates the inactive positions
    assert uniform_inactive(dense, 1000, 100, rng.generator(3)).tolist() == list(range(900, 1000))


def test_uniform_inactive_is_uniform():
    """Every inactive position is chosen about equally often (χ²-style bound on counts)."""
    active = torch.arange(0, 40, 2)
    counts = torch.zeros(40)
    for trial in range(400):
        counts[uniform_inactive(active, 40, 5, rng.generator(9, trial))] += 1
    inactive_counts = counts[1::2]
    assert counts[0::2].sum() == 0
    expected = 400 * 5 / 20
    assert float(((inactive_counts - expected) ** 2 / expected).sum()) < 45  # χ²(19) 99.9 % ≈ 43.8


def test_sign_split_prunes_closest_to_zero_on_each_side():
    layer = SparseLinear(10, 1, nnz=10)
    values = torch.tensor([-5.0, -0.1, -0.2, -3.0, 0.3, 0.05, 4.0, 2.0, -0.01, 0.7])
    layer.layout.values.data.copy_(values)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    m = methods.create("set", layer, opt, total_steps=10, delta_t=10, set_prune="sign_split")
    drop = m.prune_slots(Layer(0, "", layer), 4)
    # 5 negatives of 10 → k_neg = round(4 · 5/10) = 2: -0.01 and -0.1; k_nonneg = 2: 0.05 and 0.3
    assert drop.tolist() == [1, 4, 5, 8]
    magnitude = methods.create("set", layer, opt, total_steps=10, delta_t=10)
    assert magnitude.prune_slots(Layer(0, "", layer), 4).tolist() == [1, 2, 5, 8]
