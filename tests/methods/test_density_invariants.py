"""Invariant 9: uniform gives d_l = D; ER/ERK keep every d_l ≤ 1 and hit the budget within one weight per layer."""
from __future__ import annotations

import math

import pytest
from torch import nn

from sparsetrain import sparse_layers, sparsify
from sparsetrain.density import layer_densities


def _model():
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32, 10),
                         nn.Linear(10, 10), nn.Linear(10, 3))


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_layer_densities_meet_the_budget(distribution, sparsity):
    dense = _model()
    shapes = {n: tuple(m.weight.shape) for n, m in dense.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    densities = layer_densities(shapes, sparsity, distribution)
    if distribution == "uniform":
        assert all(d == pytest.approx(1 - sparsity) for d in densities.values())
    assert all(d <= 1.0 for d in densities.values())
    model = sparsify(dense, sparsity, distribution=distribution, seed=1)
    # layers ER/ERK saturate stay plain dense modules; they count toward the budget as fully active
    active = {n: m.nnz for n, m in sparse_layers(model).items()}
    active.update({n: m.weight.numel() for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)})
    assert set(active) == set(shapes)
    assert all(densities[n] == 1.0 for n in active if n not in sparse_layers(model))
    total_active = sum(active.values())
    assert abs(total_active - (1 - sparsity) * sum(math.prod(s) for s in shapes.values())) <= len(shapes)
