"""Per-layer densities (methods/gse.md §2.7, invariant 9) and sparsify()."""
import math

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.density import active_count, layer_densities
from sparsetrain.errors import ConfigError

SHAPES = {"conv1": (16, 3, 3, 3), "conv2": (32, 16, 3, 3), "fc1": (256, 2048), "fc2": (10, 256)}


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98])
def test_uniform(sparsity):
    d = layer_densities(SHAPES, sparsity, "uniform")
    assert all(abs(v - (1 - sparsity)) < 1e-12 for v in d.values())


@pytest.mark.parametrize("distribution", ["er", "erk"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.95, 0.99])
def test_er_erk_budget_and_cap(distribution, sparsity):
    d = layer_densities(SHAPES, sparsity, distribution)
    assert all(0 < v <= 1.0 + 1e-12 for v in d.values())
    total = sum(math.prod(s) for s in SHAPES.values())
    active = sum(active_count(d[n], math.prod(s)) for n, s in SHAPES.items())
    assert abs(active - (1 - sparsity) * total) <= len(SHAPES)


def test_erk_makes_small_layers_dense_and_redistributes():
    d = layer_densities(SHAPES, 0.5, "erk")
    assert d["conv1"] == 1.0  # the smallest layer saturates
    d_clip = layer_densities(SHAPES, 0.5, "erk", redistribute=False)
    total = sum(math.prod(s) for s in SHAPES.values())
    active_clip = sum(d_clip[n] * math.prod(s) for n, s in SHAPES.items())
    assert active_clip < 0.5 * total - 1  # clipping alone loses budget; redistribution does not


def test_er_formula_ratio():
    d = layer_densities({"a": (100, 100), "b": (100, 400)}, 0.9, "er")
    assert abs(d["a"] / d["b"] - (200 / 10000) / (500 / 40000)) < 1e-9


def test_overrides_are_fixed_and_counted():
    d = layer_densities(SHAPES, 0.9, "erk", overrides={"fc2": 0.0, "conv*": 0.5})
    assert d["fc2"] == 1.0 and d["conv1"] == 0.5 and d["conv2"] == 0.5
    total = sum(math.prod(s) for s in SHAPES.values())
    active = sum(d[n] * math.prod(s) for n, s in SHAPES.items())
    assert abs(active - 0.1 * total) < 1e-6 * total


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), "sparsity must be in"),
    (dict(sparsity=0.9, distribution="erdos"), "distribution must be one of 'uniform', 'er', 'erk'"),
    (dict(sparsity=0.9, overrides={"nope": 0.5}), "overrides name no sparse layer"),
    (dict(sparsity=0.99, overrides={"fc1": 0.0}), "overrides use more active weights"),
    (dict(sparsity=0.9, overrides={"fc1": 2.0}), r"overrides\['fc1'\] must be in"),
])
def test_density_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        layer_densities(SHAPES, **kwargs)


def _net():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=1), nn.Flatten(),
                         nn.Linear(16 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 10))


def test_sparsify_swaps_and_hits_budget():
    model = _net()
    st.sparsify(model, 0.8, distribution="er")
    layers = st.sparse_layers(model)
    assert list(layers) == ["0", "2", "4"]  # ER saturates the last layer: it stays an nn.Linear
    assert isinstance(layers["0"], st.SparseConv2d) and isinstance(layers["4"], st.SparseLinear)
    assert type(model[6]) is nn.Linear
    total = sum(math.prod(m.weight_shape) for m in layers.values()) + 640
    assert abs(sum(m.nnz for m in layers.values()) + 640 - 0.2 * total) <= 4
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_sparsify_exclude_overrides_masked_and_seed():
    model = st.sparsify(_net(), 0.9, layout="masked", exclude=["0", "6"], overrides={"2": 0.5}, seed=3)
    layers = st.sparse_layers(model)
    assert list(layers) == ["2", "4"]
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[4], st.MaskedLinear)
    assert abs(layers["2"].sparsity - 0.5) < 1e-3
    again = st.sparsify(_net(), 0.9, layout="masked", exclude=["0", "6"], overrides={"2": 0.5}, seed=3)
    assert torch.equal(st.sparse_layers(again)["4"].coordinates(), layers["4"].coordinates())
    other = st.sparsify(_net(), 0.9, layout="masked", exclude=["0", "6"], overrides={"2": 0.5}, seed=4)
    assert not torch.equal(st.sparse_layers(other)["4"].coordinates(), layers["4"].coordinates())


def test_sparsify_single_layer_returns_replacement():
    layer = st.sparsify(nn.Linear(10, 10), 0.5)
    assert isinstance(layer, st.SparseLinear) and layer.nnz == 50


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=-0.5), "sparsity must be in"),
    (dict(sparsity=0.9, layout="csr"), "layout must be one of 'compressed', 'masked'"),
    (dict(sparsity=0.9, distribution="gaussian"), "distribution must be one of"),
    (dict(sparsity=0.9, exclude=["fc9"]), "exclude names no"),
])
def test_sparsify_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        st.sparsify(_net(), **kwargs)


def test_sparsify_grouped_conv_needs_masked():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="groups=2"):
        st.sparsify(model, 0.5)
    st.sparsify(model, 0.5, layout="masked")
    assert isinstance(model[0], st.MaskedConv2d)


def test_layers_saturated_by_er_stay_dense_modules():
    model = nn.Sequential(nn.Linear(40, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10))
    st.sparsify(model, 0.9, distribution="er")
    assert type(model[0]) is nn.Linear and type(model[4]) is nn.Linear  # saturated: left dense
    assert isinstance(model[2], st.SparseLinear)
    total = 40 * 2048 + 2048 * 2048 + 2048 * 10
    active = 40 * 2048 + model[2].nnz + 2048 * 10
    assert abs(active - 0.1 * total) <= 3
    explicit = st.sparsify(nn.Sequential(nn.Linear(8, 8)), 0.5, overrides={"0": 0.0})
    assert isinstance(explicit[0], st.SparseLinear) and explicit[0].nnz == 64  # asked for: stays sparse


def test_cpu_bfloat16_autocast_computes_sparse_layers_in_bfloat16_with_float32_weights():
    """Mixed precision on the CPU: under bfloat16 autocast a sparse layer runs our bfloat16 kernels on a
    bfloat16 copy of its values (output bfloat16, bias added in bfloat16), and the float32 values get a
    float32 gradient equal to the float64 one up to bfloat16 rounding."""
    dense_then_sparse = nn.Sequential(nn.Linear(8, 16), st.SparseLinear(16, 4, sparsity=0.5))
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = dense_then_sparse[0](x)
        y = dense_then_sparse[1](h)
    assert h.dtype == y.dtype == torch.bfloat16
    y.float().sum().backward()
    sparse = dense_then_sparse[1]
    assert sparse.layout.values.dtype == sparse.layout.values.grad.dtype == torch.float32
    w_mask = sparse.layout.to_dense() != 0
    reference = h.detach().double().sum(0).expand(4, 16)[w_mask]  # d(sum y)/dW = sum over the batch of h
    torch.testing.assert_close(sparse.layout.values.grad.double(), reference, rtol=2.0**-7, atol=1e-3)
    with torch.autocast("cpu", dtype=torch.float16):  # a dtype our CPU kernels lack: the values' dtype
        assert dense_then_sparse[1](h).dtype == torch.float32
