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
    model = sparsify(_model(), sparsity, distribution=distribution, seed=1)
    layers = sparse_layers(model).values()
    sizes = [math.prod(m.weight_shape) for m in layers]
    shapes = {n: m.weight_shape for n, m in sparse_layers(model).items()}
    densities = layer_densities(shapes, sparsity, distribution)
    if distribution == "uniform":
        assert all(d == pytest.approx(1 - sparsity) for d in densities.values())
    assert all(d <= 1.0 for d in densities.values())
    total_active = sum(m.nnz for m in layers)
    assert abs(total_active - (1 - sparsity) * sum(sizes)) <= len(sizes)
