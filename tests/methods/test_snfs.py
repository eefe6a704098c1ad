"""SNFS: masked layers only (inv. 12), momentum-share regrowth with exact largest-remainder counts."""
from __future__ import annotations

import pytest
import torch

from gse_testing import make_model
from sparsetrain import methods
from sparsetrain.errors import ConfigError
from sparsetrain.methods.snfs import regrowth_counts


def test_snfs_on_compressed_layers_raises():
    model = make_model("linear")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ConfigError, match="snfs needs masked-dense layers.*compressed.*layout='masked', dense_grad=True"):
        methods.create("snfs", model, opt, total_steps=10, delta_t=5)


def test_snfs_needs_dense_grad_and_momentum():
    model = make_model("masked_linear", dense_grad=False)
    with pytest.raises(ConfigError, match="without dense_grad"):
        methods.create("snfs", model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), total_steps=10,
                       delta_t=5)
    model = make_model("masked_linear", dense_grad=True)
    with pytest.raises(ConfigError, match="momentum > 0"):
        methods.create("snfs", model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10, delta_t=5)
    with pytest.raises(ConfigError, match="got Adagrad"):
        methods.create("snfs", model, torch.optim.Adagrad(model.parameters()), total_steps=10, delta_t=5)


def test_regrowth_counts():
    assert regrowth_counts(10, [0.5, 0.3, 0.2], [100, 100, 100]) == [5, 3, 2]
    # layer 0 is capped at 2: its excess 3 goes to the others by share (0.3 : 0.2)
    assert regrowth_counts(10, [0.5, 0.3, 0.2], [2, 100, 100]) == [2, 5, 3]
    # largest remainder, ties to the lower index: 7 · (1/3 each) = 2.33 → 3, 2, 2
    assert regrowth_counts(7, [1, 1, 1], [10, 10, 10]) == [3, 2, 2]
    assert regrowth_counts(50, [1, 1], [3, 4]) == [3, 4]       # not enough room anywhere: Σ capacity
    assert regrowth_counts(6, [0, 0], [1, 5]) == [1, 5]        # all shares 0: by capacity
    for total, shares, caps in [(97, [0.1, 0.7, 0.15, 0.05], [30, 40, 50, 60]), (13, [1e-9, 1, 2], [5, 5, 5])]:
        counts = regrowth_counts(total, shares, caps)
        assert sum(counts) == min(total, sum(caps)) and all(0 <= c <= cap for c, cap in zip(counts, caps))


def test_snfs_schedule_defaults():
    model = make_model("masked_linear", dense_grad=True)
    m = methods.create("snfs", model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), total_steps=100,
                       delta_t="epoch", steps_per_epoch=10)
    assert m.alpha_at(0) == pytest.approx(0.5) and m.alpha_at(100) == pytest.approx(0.005)
    assert m.predicate.update_steps(100) == [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]
