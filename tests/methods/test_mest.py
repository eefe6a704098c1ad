"""MEST (methods/mest.md §5): schedule, Elastic Mutation, Soft Memory Bound, block units, init, resume, errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gse_testing import KINDS, OPTIMIZERS, make_model, train_step
from sparsetrain import methods, rng
from sparsetrain.errors import ConfigError
from sparsetrain.methods import mest as mest_module
from sparsetrain.methods.mest import active_ratio
from sparsetrain.nn import SparseConv2d, SparseLinear, sparse_layers
from test_invariants import _check_update, _snapshot


def _create(model, total_steps=160, optimizer="adam", **hp):
    opt = OPTIMIZERS[optimizer](model.parameters())
    return opt, methods.create("mest", model, opt, total_steps=total_steps, seed=5, **hp)


def _run(model, opt, method, kind, steps, check=None):
    """Train ``steps`` steps; return [(step, stats)] of every update (``check(before, stats)`` on each)."""
    updates = []
    for t in range(steps):
        train_step(model, opt, kind, t)
        before = _snapshot(model, opt)
        stats = method.step()
        if stats is not None:
            updates.append((t, stats))
            if check is not None:
                check(before, stats)
    return updates


def _budgets(method):
    return [n * method.rows for n in method.budget]


# --- invariant 1: schedule -------------------------------------------------------------------------------------
@pytest.mark.parametrize("hp", [{}, {"granularity": "epoch", "delta_t": 5, "stage_bounds": [90, 120]}])
def test_schedule_of_160_epochs(hp):
    epoch = 3
    total = 160 * epoch
    _, method = _create(make_model("linear"), total_steps=total, steps_per_epoch=epoch, **hp)
    assert method.update_starts == [5 * epoch * i for i in range(32)]
    runs_after = [t for t in range(total) if method.is_update_step(t)]
    assert runs_after == [5 * epoch * i - 1 for i in range(1, 32)]  # before the forward of step 5·E·i
    assert [method.stage(t) for t in (0, 90 * epoch - 1, 90 * epoch, 120 * epoch - 1, 120 * epoch)] == [0, 0, 1, 1, 2]


def test_fractional_positions_are_exact():
    """0.7 of 100 steps is step 70, not 69 (floats are read by their decimal form)."""
    _, method = _create(make_model("linear"), total_steps=100, delta_t=0.1, stage_bounds=[0.7, 0.9])
    assert method.update_starts == list(range(0, 100, 10))
    assert method.stage(69) == 0 and method.stage(70) == 1 and method.stage(90) == 2


# --- invariants 2, 4, 5, 6: Elastic Mutation ---------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam", "adamw"])
@pytest.mark.parametrize("kind", KINDS)
def test_elastic_mutation(kind, optimizer):
    model = make_model(kind)
    opt, method = _create(model, optimizer=optimizer, exclude_pruned=True)
    budgets = _budgets(method)
    assert [m.nnz for m in sparse_layers(model).values()] == budgets  # the creation-time update kept n_l
    updates = _run(model, opt, method, kind, 160, lambda before, stats: _check_update(model, opt, before, stats,
                                                                                      "local"))
    assert len(updates) == 31
    for t, stats in updates:
        stage = method.stage(t + 1)
        for entry, n in zip(stats["layers"].values(), budgets, strict=True):
            assert entry["nnz"] == n                                        # exactly n_l after every update
            assert entry["pruned"] == entry["grown"] == (round(0.2 * n), round(0.1 * n), 0)[stage]


def test_prunes_lowest_score_and_may_regrow_a_pruned_weight():
    """λ = 0: the pruned slots are the smallest |w| (ties to the lower index); growth draws among every weight
    inactive after the prune, so with a layer this dense some pruned positions come back at value 0."""
    model = nn.Sequential(SparseLinear(6, 5, sparsity=0.2, generator=rng.generator(1)))
    opt, method = _create(model, total_steps=40, delta_t=2, mutation_ratio=0.5, init="random")
    layout = sparse_layers(model)["0"].layout
    regrown = 0
    for t in range(20):
        train_step_linear(model, opt, t)
        lin, values = layout.linear_indices().clone(), layout.slot_values().clone()
        stats = method.step()
        if stats is None:
            continue
        k = stats["layers"]["0"]["pruned"]
        pruned = lin[torch.sort(torch.argsort(values.abs(), stable=True)[:k]).values]
        _assert_pruned_exactly(layout, lin, values, pruned)
        regrown += int(torch.isin(pruned, layout.linear_indices()).sum())
    assert regrown > 0


def train_step_linear(model, opt, t):
    g = rng.generator(9, t)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def test_gradient_term_of_the_score():
    """λ > 0: S = |w| + λ|g| with g the gradient of the last backward; a huge λ prunes by |g|."""
    model = nn.Sequential(SparseLinear(20, 10, sparsity=0.5, generator=rng.generator(2)))
    opt, method = _create(model, total_steps=10, optimizer="sgd_momentum", delta_t=2, lam=1e6, init="random")
    layout = sparse_layers(model)["0"].layout
    for t in range(2):
        train_step_linear_wide(model, opt, t)
        grad = layout.slot_values(layout.parameter.grad).clone()
        lin, values = layout.linear_indices().clone(), layout.slot_values().clone()
        stats = method.step()
    k = stats["layers"]["0"]["pruned"]
    score = values.abs().double() + 1e6 * grad.abs().double()
    pruned = lin[torch.sort(torch.argsort(score, stable=True)[:k]).values]
    by_magnitude = lin[torch.sort(torch.argsort(values.abs(), stable=True)[:k]).values]
    assert not torch.equal(pruned, by_magnitude)      # the gradient term changed the choice
    _assert_pruned_exactly(layout, lin, values, pruned)


def _assert_pruned_exactly(layout, lin, values, pruned):
    """Every weight outside ``pruned`` keeps its value; every pruned one is gone or back at exactly 0."""
    after = layout.linear_indices()
    dense = layout.to_dense().reshape(-1)
    survivors = ~torch.isin(lin, pruned)
    assert bool(torch.isin(lin[survivors], after).all())
    assert torch.equal(dense[lin[survivors]], values[survivors])
    assert bool((dense[pruned] == 0).all())


def train_step_linear_wide(model, opt, t):
    g = rng.generator(11, t)
    x, y = torch.randn(8, 20, generator=g), torch.randn(8, 10, generator=g)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def test_gradient_score_needs_the_last_backward():
    model = nn.Sequential(SparseLinear(20, 10, sparsity=0.5, generator=rng.generator(2)))
    opt, method = _create(model, total_steps=10, delta_t=2, lam=1.0, init="random")
    train_step_linear_wide(model, opt, 0)
    method.step()
    train_step_linear_wide(model, opt, 1)
    opt.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="gradient of the last backward"):
        method.step()


# --- invariant 3: Soft Memory Bound ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv", "masked_linear"])
def test_soft_memory_bound(kind):
    model = make_model(kind)
    opt, method = _create(model, optimizer="sgd_momentum", soft_memory_bound=True)
    budgets = _budgets(method)
    layers = list(sparse_layers(model).values())
    assert [m.nnz for m in layers] == [n + round(0.2 * n) for n in budgets]   # the update at creation grew Δ
    frozen = None
    for t in range(160):
        train_step(model, opt, kind, t)
        stats = method.step()
        if frozen is not None:
            assert all(torch.equal(a, m.layout.linear_indices()) for a, m in zip(frozen, layers))
        if stats is None:
            continue
        stage = method.stage(t + 1)
        for m, n in zip(layers, budgets, strict=True):
            assert m.nnz == n + (round(0.2 * n), round(0.1 * n), 0)[stage]
            dense = m.layout.to_dense().reshape(-1)
            assert int((dense != 0).sum()) <= m.nnz
        if stage == 2 and frozen is None:
            frozen = [m.layout.linear_indices().clone() for m in layers]
    assert frozen is not None and [m.nnz for m in layers] == budgets


def test_soft_memory_bound_needs_a_stage_2_update():
    with pytest.raises(ConfigError, match="soft_memory_bound needs an update in stage 2"):
        _create(make_model("linear"), total_steps=100, soft_memory_bound=True, delta_t=30, stage_bounds=[0.5, 0.95])


# --- invariant 7: ratio converter ------------------------------------------------------------------------------
def test_ratio_converter():
    assert active_ratio(0.02, 0.9) == pytest.approx(0.2)
    assert active_ratio(0.05, 0.9) == pytest.approx(0.5)
    model = nn.Sequential(SparseLinear(50, 40, sparsity=0.9, generator=rng.generator(4)))
    opt, method = _create(model, total_steps=20, delta_t=2, mutation_ratio=0.02, ratio_units="all", init="random")
    n = method.budget[0]
    assert method.last_stats["step"] == -1                        # the update at creation (t_0 = 0)
    assert method.last_stats["layers"]["0"]["pruned"] == round(0.2 * n)


# --- invariant 8: block units ----------------------------------------------------------------------------------
def _assert_blocks(layout, rows):
    dense = layout.to_dense() != 0
    active = torch.zeros(layout.shape, dtype=torch.bool)
    lin = layout.linear_indices()
    active.view(-1)[lin] = True
    grouped = active.view(layout.shape[0] // rows, rows, layout.shape[1])
    assert bool((grouped.all(1) == grouped.any(1)).all())   # each rows×1 unit fully active or fully inactive
    assert layout.nnz % rows == 0
    assert int(dense.sum()) <= layout.nnz


@pytest.mark.parametrize("soft", [False, True])
def test_block_scheme(soft):
    g = rng.generator(7)
    model = nn.Sequential(SparseConv2d(3, 8, 3, padding=1, sparsity=0.7, generator=g), nn.Tanh(), nn.Flatten(),
                          SparseLinear(8 * 5 * 5, 12, sparsity=0.8, generator=g))
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    method = methods.create("mest", model, opt, total_steps=64, seed=2, scheme="block", delta_t=4,
                            soft_memory_bound=soft, lam=0.1)
    layers = list(sparse_layers(model).values())
    budgets = _budgets(method)
    for t in range(64):
        g = rng.generator(8, t)
        x, y = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 12, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        before = [m.layout.to_dense().clone() for m in layers]
        stats = method.step()
        for m in layers:
            _assert_blocks(m.layout, 4)
        if stats is not None and not soft:
            for m, n, old in zip(layers, budgets, before, strict=True):
                assert m.nnz == n
                dropped = (old != 0) & (m.layout.to_dense() == 0)
                assert int(dropped.sum()) % 4 == 0
    assert [m.nnz for m in layers] == budgets


def test_block_units_are_pruned_by_norm():
    """Block scores are ‖w_unit‖₂: the pruned units are those of smallest norm (ties to the lower unit)."""
    model = nn.Sequential(SparseLinear(10, 8, sparsity=0.5, generator=rng.generator(1)))
    opt, method = _create(model, total_steps=8, delta_t=2, scheme="block", block_rows=2, mutation_ratio=0.25,
                          init="random")
    layout = sparse_layers(model)["0"].layout
    for t in range(2):
        train_step_blocks(model, opt, t)
        weights = layout.to_dense().view(4, 2, 10).clone()
        active = _active_units(layout, 2)
        stats = method.step()
    norms = weights.norm(dim=1)
    ranked = sorted((float(norms[g, c]), g * 10 + c) for g in range(4) for c in range(10) if active[g, c])
    k = stats["layers"]["0"]["pruned"] // 2
    after, now = _active_units(layout, 2), layout.to_dense().view(4, 2, 10)
    for _, unit in ranked[:k]:    # pruned: inactive now, or regrown at exactly 0
        g, c = divmod(unit, 10)
        assert not after[g, c] or bool((now[g, :, c] == 0).all())
    for _, unit in ranked[k:]:    # kept with their values
        g, c = divmod(unit, 10)
        assert after[g, c] and torch.equal(now[g, :, c], weights[g, :, c])


def _active_units(layout, rows):
    active = torch.zeros(layout.shape, dtype=torch.bool)
    active.view(-1)[layout.linear_indices()] = True
    return active.view(layout.shape[0] // rows, rows, layout.shape[1]).all(1)


def train_step_blocks(model, opt, t):
    x = torch.randn(4, 10, generator=rng.generator(5, t))
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


# --- initialisation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_bytes", [16 << 20, 4 * 10 * 4])
def test_magnitude_init_keeps_the_largest_of_the_dense_draw(monkeypatch, chunk_bytes):
    """init='magnitude': the n_l largest |w| of a Kaiming-normal (fan_out) draw, drawn in row chunks."""
    monkeypatch.setattr(mest_module, "_INIT_CHUNK_BYTES", chunk_bytes)
    model = nn.Sequential(SparseLinear(10, 12, sparsity=0.75, generator=rng.generator(1)))
    layer = sparse_layers(model)["0"]
    n = layer.nnz
    opt, method = _create(model, total_steps=100, mutation_ratio=0.0)
    g = rng.generator(5, 0, 0, 1)
    rows = max(1, chunk_bytes // (4 * 10))
    draw = torch.cat([torch.randn(min(rows, 12 - r0), 10, generator=g) for r0 in range(0, 12, rows)])
    draw = draw * math.sqrt(2.0 / 12)
    expected = torch.sort(torch.argsort(draw.reshape(-1).abs(), descending=True, stable=True)[:n]).values
    assert torch.equal(layer.layout.linear_indices(), expected)
    assert torch.equal(layer.layout.slot_values(), draw.reshape(-1)[expected])


def test_keep_init_leaves_sparsify_weights():
    model = make_model("linear")
    before = [m.layout.to_dense().clone() for m in sparse_layers(model).values()]
    _create(model, mutation_ratio=0.0, init="keep")
    assert all(torch.equal(b, m.layout.to_dense()) for b, m in zip(before, sparse_layers(model).values()))


def test_random_init_on_a_layer_far_too_large_to_exist_densely():
    """init='random' and the mutations stay O(nnz): a 2^20 × 2^20 layer (4 TiB dense) with 2^12 weights."""
    n = 1 << 20
    model = nn.Sequential(SparseLinear(n, n, nnz=1 << 12, bias=False, generator=rng.generator(0)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = methods.create("mest", model, opt, total_steps=4, delta_t=2, init="random", soft_memory_bound=True,
                            stage_bounds=[0.25, 0.5])
    layer = sparse_layers(model)["0"]
    x = torch.zeros(2, n)
    x[:, :64] = 1.0
    for _ in range(4):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        method.step()
    assert layer.nnz == 1 << 12
    lin = layer.layout.linear_indices()
    assert bool((lin[1:] > lin[:-1]).all()) and int(lin[-1]) < n * n


# --- resume ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hp", [{}, {"soft_memory_bound": True, "lam": 0.5}])
def test_resume_gives_the_same_run(hp):
    kind, steps, cut = "linear", 80, 33

    def fresh():
        model = make_model(kind, seed=1)
        opt, method = _create(model, total_steps=steps, optimizer="adam", delta_t=0.05, **hp)
        return model, opt, method

    model, opt, method = fresh()
    for t in range(steps):
        train_step(model, opt, kind, t)
        method.step()
        if t + 1 == cut:
            saved = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                     "opt": __import__("copy").deepcopy(opt.state_dict()), "method": method.state_dict()}
    model2, opt2, method2 = fresh()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    method2.load_state_dict(saved["method"])
    for t in range(cut, steps):
        train_step(model2, opt2, kind, t)
        method2.step()
    for a, b in zip(sparse_layers(model).values(), sparse_layers(model2).values()):
        assert torch.equal(a.layout.linear_indices(), b.layout.linear_indices())
        assert torch.equal(a.layout.slot_values(), b.layout.slot_values())
    assert method.state_dict() == method2.state_dict()


# --- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hp,match", [
    ({"scheme": "pattern"}, "scheme='pattern'.*not implemented yet; allowed: 'irregular', 'block'"),
    ({"scheme": "diagonal"}, "scheme must be one of 'irregular', 'block'"),
    ({"scheme": "block", "block_rows": 5}, "divisible by block_rows=5; layer '0' has 16"),
    ({"scheme": "block", "init": "keep"}, "init='keep'"),
    ({"delta_t": 0.001}, "delta_t must resolve to at least 1 step"),
    ({"delta_t": 1.5}, "delta_t must be a fraction in \\[0, 1\\]"),
    ({"stage_bounds": [0.5]}, "stage_bounds must be a list of 2 positions"),
    ({"stage_bounds": [0.8, 0.5]}, "stage_bounds must be ascending"),
    ({"granularity": "epoch"}, "granularity='epoch' needs steps_per_epoch"),
    ({"granularity": "batch"}, "granularity must be one of 'step', 'epoch'"),
    ({"mutation_ratio": 1.5}, "mutation_ratio must be"),
    ({"mutation_ratio": 0.5, "ratio_units": "all"}, "mutation_ratio is 1.*of the active units of layer '0'"),
    ({"soft_memory_bound": True, "smb_overshoot": 5.0}, "smb_overshoot=5.0: layer '0' would hold"),
    ({"ratio_units": "some"}, "ratio_units must be one of 'active', 'all'"),
    ({"score_grad": "mean"}, "score_grad must be one of 'last_backward', 'none'"),
    ({"init": "xavier"}, "init must be one of 'magnitude', 'random', 'keep'"),
    ({"lam": -1}, "lam must be"),
    ({"alpha": 0.3}, "unknown hyperparameter"),
])
def test_bad_hyperparameters(hp, match):
    with pytest.raises(ConfigError, match=match):
        _create(make_model("linear"), **hp)


def test_state_needs_the_budget():
    _, method = _create(make_model("linear"))
    state = method.state_dict()
    del state["budget"]
    with pytest.raises(ConfigError, match="mest state needs 'budget'"):
        method.load_state_dict(state)

