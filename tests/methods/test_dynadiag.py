"""DynaDiag (methods/dynadiag.md §5): budget, soft top-K, forward, α gradient, swaps, freeze, storage, resume."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from sparsetrain import methods, rng
from sparsetrain.errors import ConfigError
from sparsetrain.kernels.diagonal import diagonal_coordinates
from sparsetrain.nn import DiagonalLinear, param_groups, sparse_layers, sparsify
from sparsetrain.nn.diagonal import diagonal_budget


def _dense(layer: DiagonalLinear, all_diagonals: bool = False) -> torch.Tensor:
    """W built densely from the layer's diagonals (float64), weighted as the forward weights them."""
    layout = layer.layout
    a = layer.soft_weights().double().detach()
    if all_diagonals:
        offsets, values, weights = torch.arange(layout.n_diagonals), layout.values.double(), a
    else:
        offsets, values = layout.offsets, layout.selected_values().double()
        weights = torch.ones(offsets.numel(), dtype=torch.float64) if bool(layer.frozen) else a[offsets]
    rows, cols = diagonal_coordinates(offsets, layer.out_features, layer.in_features)
    w = torch.zeros(layer.out_features, layer.in_features, dtype=torch.float64)
    return w.index_put((rows.reshape(-1), cols.reshape(-1)), (values.detach() * weights[:, None]).reshape(-1), accumulate=True)


def _model(sparsity=0.8, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 5))
    return sparsify(model, sparsity, distribution="uniform", layout="diagonal", exclude=["4"], seed=seed)


def _train(model, optimizer, method, steps, start=0, on_step=None):
    for t in range(start, start + steps):
        g = rng.generator(4, t)
        x, y = torch.randn(32, 24, generator=g), torch.randint(0, 5, (32,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        stats = method.step()
        if on_step is not None:
            on_step(t, stats)


# --- invariants 2, 3: budget and the soft top-K --------------------------------------------------------------
@pytest.mark.parametrize("m,n,s,k", [(768, 3072, 0.9, 308), (10, 10, 0.7, 3), (10, 10, 0.99, 1), (8, 8, 0.0, 8),
                                     (4, 12, 0.5, 6), (12, 4, 0.75, 3)])
def test_diagonal_budget(m, n, s, k):
    assert diagonal_budget(s, m, n) == k
    assert 1 <= k <= max(m, n)


def test_uniform_importance_weights_every_diagonal_k_over_p():
    layer = DiagonalLinear(12, 30, diagonals=7, alpha_noise=0.0)
    a = layer.soft_weights()
    torch.testing.assert_close(a, torch.full((30,), 7 / 30))
    assert float(a.detach().sum()) == pytest.approx(7.0)


# --- invariants 4, 5: forward --------------------------------------------------------------------------------
@pytest.mark.parametrize("m,n", [(30, 12), (12, 30), (9, 9)])
def test_sparse_forward_is_the_dense_product_of_the_selected_diagonals(m, n):
    layer = DiagonalLinear(n, m, sparsity=0.7, generator=rng.generator(1)).double()
    layer.temperature.fill_(0.3)
    x = torch.randn(5, 2, n, dtype=torch.float64)
    expected = x @ _dense(layer).t() + layer.bias.detach()
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("m,n", [(30, 12), (12, 30)])
def test_reference_forward_weights_all_diagonals(m, n):
    model = nn.Sequential(DiagonalLinear(n, m, sparsity=0.7, generator=rng.generator(2)).double())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    methods.create("dynadiag", model, opt, total_steps=10, mode="reference")
    layer = model[0]
    assert layer.layout.storage == "full" and layer.layout.values.shape == (max(m, n), min(m, n))
    x = torch.randn(4, n, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ _dense(layer, all_diagonals=True).t() + layer.bias.detach(),
                               rtol=0, atol=1e-10)


# --- invariants 6, 7: gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize("m,n", [(30, 12), (12, 30)])
def test_gradients_match_autograd_through_the_dense_construction(m, n):
    layer = DiagonalLinear(n, m, sparsity=0.6, generator=rng.generator(3)).double()
    layer.temperature.fill_(0.5)
    x = torch.randn(6, n, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(6, m, dtype=torch.float64)
    grads = torch.autograd.grad(layer(x), (x, layer.layout.values, layer.alpha), gy)
    # the same function written densely: W = Σ_j α̃_j[Sel] · V_j placed on its diagonal
    alpha = layer.alpha.detach().clone().requires_grad_(True)
    values = layer.layout.values.detach().clone().requires_grad_(True)
    a = (layer.diagonals * torch.softmax(alpha / 0.5, 0)).clamp(0, 1)[layer.layout.offsets]
    rows, cols = diagonal_coordinates(layer.layout.offsets, m, n)
    w = torch.zeros(m, n, dtype=torch.float64).index_put((rows.reshape(-1), cols.reshape(-1)),
                                                         (values * a[:, None]).reshape(-1), accumulate=True)
    want = torch.autograd.grad(x @ w.t() + layer.bias, (x, values, alpha), gy)
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_unselected_importance_learns_only_through_the_normaliser():
    """∂L/∂α_i = −(p_i/T) · Σ_{j∈Sel} g_j α̃_j for i ∉ Sel, with g_j = ∂L/∂α̃_j."""
    layer = DiagonalLinear(20, 8, diagonals=5, generator=rng.generator(5)).double()
    temperature = 2.0
    layer.temperature.fill_(temperature)
    x, gy = torch.randn(7, 20, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    (grad_alpha,) = torch.autograd.grad(layer(x), layer.alpha, gy)
    soft = layer.soft_weights().double().detach()
    assert bool((soft < 1).all())                      # no clamp active
    leaf = soft.clone().requires_grad_(True)
    from sparsetrain.kernels.diagonal import diagonal_linear
    sel = layer.layout.offsets
    y = diagonal_linear(x, sel, layer.layout.values.detach(), leaf[sel], 8)
    (g,) = torch.autograd.grad(y, leaf, gy)
    p = torch.softmax(layer.alpha.detach().double() / temperature, 0)
    unselected = torch.ones(20, dtype=torch.bool)
    unselected[sel] = False
    expected = -(p / temperature) * (g[sel] * soft[sel]).sum()
    torch.testing.assert_close(grad_alpha[unselected], expected[unselected], rtol=1e-9, atol=1e-14)
    assert bool((grad_alpha[unselected] != 0).all())


# --- invariants 8, 9: freeze and swaps -------------------------------------------------------------------------
def test_freeze_with_folding_keeps_the_function():
    layer = DiagonalLinear(16, 40, sparsity=0.8, generator=rng.generator(6))
    layer.temperature.fill_(0.7)
    x = torch.randn(4, 16)
    before = layer(x).detach()
    layer.freeze(fold=True)
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
    assert not layer.alpha.requires_grad


def test_schedule_swaps_and_freeze():
    model = _model()
    opt = torch.optim.Adam(param_groups(model, 1e-4), lr=3e-2)
    method = methods.create("dynadiag", model, opt, total_steps=40, freeze_at=0.5)
    layers = [m for m in sparse_layers(model).values()]
    assert method.t_freeze == 20
    assert [float(m.temperature) for m in layers] == [5.0, 5.0]
    swaps, seen = [], {}

    def check(t, stats):
        for m in layers:
            assert float(m.temperature) == pytest.approx(method.temperature_at(t + 1))
            assert m.layout.values.shape == (m.diagonals, m.layout.length)   # compact: only K rows exist
        if stats is not None:
            swaps.append((t, stats["swaps"], stats["frozen"]))
        if t + 1 == 20:
            seen["frozen"] = [(m.layout.offsets.clone(), m.alpha.detach().clone()) for m in layers]

    _train(model, opt, method, 40, on_step=check)
    assert any(n > 0 for _, n, _ in swaps)                 # selections changed during the annealing
    assert [(t, f) for t, _, f in swaps if f] == [(19, True)]  # one freeze, after step 19
    assert all(t <= 19 for t, _, _ in swaps)
    for m, (offsets, alpha) in zip(layers, seen["frozen"]):   # nothing moves after the freeze
        assert bool(m.frozen) and torch.equal(m.layout.offsets, offsets) and torch.equal(m.alpha.detach(), alpha)
    assert method.temperature_at(0) == 5.0 and method.temperature_at(20) == 0.05
    assert method.temperature_at(10) == pytest.approx(0.05 + 4.95 * 0.5)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam", "adamw"])
def test_incoming_diagonal_starts_at_zero_with_zero_state(optimizer):
    model = nn.Sequential(DiagonalLinear(12, 20, diagonals=4, generator=rng.generator(7)))
    make = {"sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
            "adam": lambda p: torch.optim.Adam(p, lr=0.01), "adamw": lambda p: torch.optim.AdamW(p, lr=0.01)}
    opt = make[optimizer](param_groups(model, 0.0))
    method = methods.create("dynadiag", model, opt, total_steps=100)
    layer = model[0]
    x = torch.randn(8, 12)
    opt.zero_grad()
    layer(x).square().mean().backward()
    opt.step()
    method.step()                                        # the selection follows the stepped α
    old = layer.layout.offsets.clone()
    old_values = layer.layout.values.detach().clone()
    outsider = int(torch.nonzero(~torch.isin(torch.arange(20), old))[0])
    with torch.no_grad():
        layer.alpha[outsider] = 10.0                     # force it into the top-K
    stats = method.step()
    assert stats["swaps"] == 1 and stats["layers"]["0"]["swaps"] == 1
    new = layer.layout.offsets
    row = int(torch.nonzero(new == outsider)[0])
    assert bool((layer.layout.values[row] == 0).all())
    state = opt.state[layer.layout.values]
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == layer.layout.values.shape:
            assert bool((value[row] == 0).all()), key
    kept = torch.isin(new, old)
    old_rows = torch.searchsorted(old, new[kept])
    assert torch.equal(layer.layout.values.detach()[kept], old_values[old_rows])   # kept diagonals keep values


def test_full_storage_resumes_a_reselected_diagonal():
    model = nn.Sequential(DiagonalLinear(12, 20, diagonals=4, generator=rng.generator(8)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = methods.create("dynadiag", model, opt, total_steps=100, storage="full")
    layer = model[0]
    first = int(layer.layout.offsets[0])
    kept_values = layer.layout.values.detach()[first].clone()
    outsider = int(torch.nonzero(~torch.isin(torch.arange(20), layer.layout.offsets))[0])
    with torch.no_grad():
        layer.alpha[outsider] = 10.0
        layer.alpha[first] = -10.0
    method.step()
    assert first not in layer.layout.offsets.tolist()
    with torch.no_grad():
        layer.alpha[first] = 20.0
    method.step()
    assert first in layer.layout.offsets.tolist()
    assert torch.equal(layer.layout.values.detach()[first], kept_values)


def test_freeze_at_start_is_static():
    model = _model()
    opt = torch.optim.SGD(param_groups(model, 0.0), lr=0.1)
    method = methods.create("dynadiag", model, opt, total_steps=10, freeze="at_start")
    before = [m.layout.offsets.clone() for m in sparse_layers(model).values()]
    _train(model, opt, method, 10, on_step=lambda t, s: None if s is None else pytest.fail("a frozen run changed"))
    assert all(torch.equal(b, m.layout.offsets) for b, m in zip(before, sparse_layers(model).values()))


# --- invariant 10: scope and weight decay ----------------------------------------------------------------------
def test_conv_layers_are_refused():
    with pytest.raises(ConfigError, match="layout='diagonal' \\(DynaDiag\\) supports nn.Linear only"):
        sparsify(nn.Sequential(nn.Conv2d(3, 4, 3)), 0.5, layout="diagonal")


def test_param_groups_keep_alpha_out_of_weight_decay():
    model = _model()
    groups = param_groups(model, 5e-4)
    alphas = {id(m.alpha) for m in sparse_layers(model).values()}
    for group in groups:
        if any(id(p) in alphas for p in group["params"]):
            assert group["weight_decay"] == 0.0 and all(id(p) in alphas for p in group["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with pytest.warns(UserWarning, match="weight decay to the diagonal importances"):
        methods.create("dynadiag", model, torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4),
                       total_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        methods.create("dynadiag", _model(), torch.optim.SGD(param_groups(_model(), 1e-4), lr=0.1), total_steps=10)


def test_other_methods_refuse_diagonal_layers():
    model = _model()
    for name in ("gse", "static", "mest"):
        with pytest.raises(ConfigError, match="cannot train the diagonal layer"):
            methods.create(name, model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10)


def test_dynadiag_refuses_other_layers():
    model = sparsify(nn.Sequential(nn.Linear(8, 8)), 0.5)
    with pytest.raises(ConfigError, match="trains DiagonalLinear layers only; layer '0' is SparseLinear"):
        methods.create("dynadiag", model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10)


@pytest.mark.parametrize("hp,match", [
    ({"mode": "dense"}, "mode must be one of 'sparse', 'reference'"),
    ({"mode": "reference", "storage": "compact"}, "mode='reference' computes all P diagonals and needs storage='full'"),
    ({"storage": "csr"}, "storage must be one of 'compact', 'full'"),
    ({"t_max": 0}, "t_max must be"),
    ({"t_min": 9.0}, "t_min must be"),
    ({"freeze": "later"}, "freeze must be one of 'at_fraction', 'at_start', 'never'"),
    ({"freeze_at": 1.5}, "freeze_at must be a fraction in \\[0, 1\\]"),
    ({"fold_at_freeze": "yes"}, "fold_at_freeze must be True or False"),
    ({"alpha": 0.1}, "unknown hyperparameter"),
])
def test_bad_hyperparameters(hp, match):
    model = _model()
    with pytest.raises(ConfigError, match=match):
        methods.create("dynadiag", model, torch.optim.SGD(param_groups(model, 0.0), lr=0.1), total_steps=10, **hp)


def test_bad_layer_arguments():
    with pytest.raises(ConfigError, match="give exactly one of sparsity"):
        DiagonalLinear(4, 4)
    with pytest.raises(ConfigError, match="diagonals must be an int in \\[1, P=6\\]"):
        DiagonalLinear(4, 6, diagonals=7)


# --- training ---------------------------------------------------------------------------------------
def test_bfloat16_autocast_forward_and_backward():
    layer = DiagonalLinear(24, 40, sparsity=0.8, generator=rng.generator(9))
    x = torch.randn(8, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    assert layer.layout.values.grad.dtype == torch.float32 and layer.alpha.grad is not None
    ref = x.double() @ _dense(layer).t() + layer.bias.detach().double()
    assert float((y.detach().double() - ref).abs().max() / ref.abs().max()) < 3e-2

