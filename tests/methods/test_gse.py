"""GSE: candidates (inv. 4), SDDMM scores (inv. 5), equality with RigL when exhaustive (inv. 6), samplers (inv. 10)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gse_testing import OPTIMIZERS, make_model, train_step
from sparsetrain import SparseConv2d, SparseLinear, methods, rng
from sparsetrain.methods.candidates import drop_duplicates_and_active, inactive_positions, sampled_candidates
from sparsetrain.methods.scores import Observed, gradient_at, sampler_weights
from sparsetrain.nn import sparse_layers


def test_sampled_candidates_are_unique_inactive_and_bounded():
    """Invariant 4 on the sampler: no duplicates, no actives, |S| ≤ m; many duplicates are really drawn."""
    shape = (20, 30)
    active = torch.sort(torch.randperm(600, generator=rng.generator(1))[:150]).values
    m = 400
    for sampler_f in (None, torch.rand(30) ** 4):
        lin = sampled_candidates(active, shape, m, rng.generator(2), f=sampler_f)
        assert lin.numel() <= m and bool((lin[1:] > lin[:-1]).all())
        assert not bool(torch.isin(lin, active).any()) and int(lin.max()) < 600
        assert lin.numel() < m  # with 400 draws among 450 inactive, duplicates must have been dropped
    everything = inactive_positions(active, 600)
    assert everything.numel() == 450 and not bool(torch.isin(everything, active).any())


def test_drop_duplicates_and_active_matches_set_semantics():
    draws = torch.randint(0, 50, (200,), generator=rng.generator(3))
    active = torch.tensor([0, 7, 8, 30, 49])
    got = drop_duplicates_and_active(torch.sort(draws).values, active)
    assert got.tolist() == sorted(set(draws.tolist()) - set(active.tolist()))


def test_zero_probability_units_are_never_drawn():
    f = torch.zeros(30)
    f[[3, 17]] = 1.0
    lin = sampled_candidates(torch.empty(0, dtype=torch.int64), (10, 30), 500, rng.generator(4), f=f)
    assert set((lin % 30).tolist()) <= {3, 17}


@pytest.mark.parametrize("sparsity,gamma", [(0.8, 1.0), (0.8, 0.5), (0.4, 1.0)])
def test_method_candidate_counts(sparsity, gamma):
    """Invariant 4 through the method: |S| ≤ ceil(γ·nnz), and |S| = N − nnz at density ≥ 0.5."""
    layer = SparseLinear(24, 20, sparsity=sparsity)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    m = methods.create("gse", layer, opt, total_steps=1, delta_t=1, t_end=1.0, gamma=gamma)
    nnz = layer.nnz
    layer(torch.randn(5, 24)).square().sum().backward()
    opt.step()
    stats = m.step()
    candidates = stats["layers"][""]["candidates"]
    if sparsity <= 0.5:
        assert candidates == 480 - nnz
    else:
        assert 0 < candidates <= math.ceil(gamma * nnz)


def _observe(module, x, upstream):
    obs = Observed()
    module.backward_observer = obs
    y = module(x)
    y.backward(upstream)
    module.backward_observer = None
    return obs


def test_sddmm_scores_equal_dense_gradient_linear():
    """Invariant 5 (Linear, rows = batch × tokens): SDDMM at candidates = dense autograd gradient there."""
    layer = SparseLinear(40, 30, sparsity=0.8)
    x = torch.randn(3, 5, 40)
    upstream = torch.randn(3, 5, 30)
    obs = _observe(layer, x, upstream)
    weight = layer.dense_weight().requires_grad_(True)
    F.linear(x, weight).backward(upstream)
    lin = torch.sort(torch.randperm(1200, generator=rng.generator(5))[:500]).values
    got = gradient_at(obs.parts, lin, 40)
    assert torch.allclose(got, weight.grad.reshape(-1)[lin], rtol=1e-5, atol=1e-6)
    chunked = gradient_at(obs.parts, lin, 40, budget_bytes=1)  # chunking changes nothing
    assert torch.equal(chunked, got)


def test_sddmm_scores_equal_dense_gradient_conv():
    """Invariant 5 (Conv2d, stride 2, padding 1, dilation 2): rows are (sample, output position) pairs."""
    conv = SparseConv2d(3, 5, 3, stride=2, padding=1, dilation=2, sparsity=0.7)
    x = torch.randn(2, 3, 11, 9)
    h, w = conv.output_size(11, 9)
    upstream = torch.randn(2, 5, h, w)
    obs = _observe(conv, x, upstream)
    weight = conv.dense_weight().requires_grad_(True)
    F.conv2d(x, weight, None, stride=2, padding=1, dilation=2).backward(upstream)
    lin = torch.arange(5 * 27)  # every position, active or not
    got = gradient_at(obs.parts, lin, 27)
    assert torch.allclose(got, weight.grad.reshape(-1), rtol=1e-5, atol=1e-6)


def test_micro_batches_sum_to_the_full_batch_gradient():
    layer = SparseLinear(16, 12, sparsity=0.75)
    x, upstream = torch.randn(6, 16), torch.randn(6, 12)
    obs = Observed()
    layer.backward_observer = obs
    for rows in (slice(0, 2), slice(2, 6)):
        layer(x[rows]).backward(upstream[rows])
    assert len(obs) == 2 and obs.rows == 6
    weight = layer.dense_weight().requires_grad_(True)
    F.linear(x, weight).backward(upstream)
    lin = torch.arange(192)
    assert torch.allclose(gradient_at(obs.parts, lin, 16), weight.grad.reshape(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,force", [("linear", True), ("conv", True), ("linear", False)])
def test_exhaustive_gse_grows_what_rigl_grows(kind, force):
    """Invariant 6: with all inactive positions as candidates GSE's growth equals RigL's on the same batch."""
    grown = {}
    for name in ("gse", "rigl"):
        model = make_model(kind)
        if not force:  # make the layers at least half dense so the default rule goes exhaustive
            model = torch.nn.Sequential(SparseLinear(12, 16, sparsity=0.4, generator=rng.generator(9)),
                                        torch.nn.Tanh(), SparseLinear(16, 6, sparsity=0.3, generator=rng.generator(8)))
        opt = OPTIMIZERS["sgd_momentum"](model.parameters())
        hp = {"exhaustive_density": 0.0} if (name == "gse" and force) else {}
        m = methods.create(name, model, opt, total_steps=1, delta_t=1, t_end=1.0, alpha=0.3, **hp)
        before = [l.layout.linear_indices().clone() for l in sparse_layers(model).values()]
        train_step(model, opt, kind, 0)
        m.step()
        grown[name] = [l.layout.linear_indices()[~torch.isin(l.layout.linear_indices(), b)]
                       for l, b in zip(sparse_layers(model).values(), before)]
    for g, r in zip(grown["gse"], grown["rigl"]):
        assert g.numel() > 0 and torch.equal(g, r)


def test_grabo_and_graest_weights():
    x_fm, gy_fm = torch.randn(7, 5), torch.randn(4, 5)
    f, g = sampler_weights([(x_fm, gy_fm)], "grabo")
    assert torch.allclose(f, x_fm.abs().sum(1)) and torch.allclose(g, gy_fm.abs().sum(1))
    signs_gen = rng.generator(11)
    f2, g2 = sampler_weights([(x_fm[:, :2], gy_fm[:, :2]), (x_fm[:, 2:], gy_fm[:, 2:])], "graest", signs_gen)
    s = torch.randint(0, 2, (2,), generator=rng.generator(11)).float() * 2 - 1
    s = torch.cat((s, torch.randint(0, 2, (3,), generator=_advance(rng.generator(11), 2)).float() * 2 - 1))
    assert torch.allclose(f2, (x_fm @ s).abs(), atol=1e-6) and torch.allclose(g2, (gy_fm @ s).abs(), atol=1e-6)
    assert sampler_weights([(x_fm, gy_fm)], "uniform") == (None, None)
    zero_f, _ = sampler_weights([(torch.zeros(7, 5), gy_fm)], "grabo")
    assert zero_f is None  # a distribution summing to 0 is uniform


def _advance(gen, n):
    torch.randint(0, 2, (n,), generator=gen)
    return gen


def test_graest_with_one_row_equals_grabo():
    """Invariant 10: with one row (batch 1, one output position) GraEst and GraBo sample identically."""
    tops = {}
    for sampler in ("grabo", "graest"):
        layer = SparseLinear(30, 25, sparsity=0.9, generator=rng.generator(1))
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        m = methods.create("gse", layer, opt, total_steps=1, delta_t=1, t_end=1.0, sampler=sampler, gamma=2.0)
        layer(torch.randn(1, 30, generator=rng.generator(2))).sum().backward()
        x_fm, gy_fm = layer.backward_observer.parts[0]
        tops[sampler] = sampler_weights([(x_fm, gy_fm)], sampler, rng.generator(3))
        opt.step()
        m.step()
        tops[sampler + "_topology"] = layer.layout.linear_indices()
    assert torch.equal(tops["grabo"][0], tops["graest"][0]) and torch.equal(tops["grabo"][1], tops["graest"][1])
    assert torch.equal(tops["grabo_topology"], tops["graest_topology"])


def test_global_scope_moves_weights_between_layers_and_ties_go_low():
    model = make_model("linear")
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    m = methods.create("gse", model, opt, total_steps=6, delta_t=1, t_end=1.0, scope="global", alpha=0.5)
    totals, per_layer = [], []
    for t in range(6):
        train_step(model, opt, "linear", t)
        m.step()
        totals.append(sum(l.nnz for l in sparse_layers(model).values()))
        per_layer.append([l.nnz for l in sparse_layers(model).values()])
    assert len(set(totals)) == 1
    assert len({tuple(p) for p in per_layer}) > 1  # per-layer nnz drifts under global scope


@pytest.mark.parametrize("backend_name", ["cpp", "torch"])
@pytest.mark.parametrize("kind,sampler", [("linear", "uniform"), ("linear", "grabo"), ("conv", "graest")])
def test_sampled_candidates_are_inactive_bounded_and_scored_by_the_batch_gradient(monkeypatch, backend_name, kind,
                                                                                   sampler):
    """Invariants 4 and 5 on the path GSE really takes: our fused CPU kernel or the torch composition."""
    from sparsetrain.kernels import backend
    monkeypatch.setenv(backend.ENV_VAR, backend_name)
    if kind == "linear":
        module = SparseLinear(60, 50, sparsity=0.9, generator=rng.generator(3))
        x, upstream = torch.randn(4, 60), torch.randn(4, 50)
        weight = module.dense_weight().requires_grad_(True)
        F.linear(x, weight).backward(upstream)
    else:
        module = SparseConv2d(3, 6, 3, padding=1, sparsity=0.85, generator=rng.generator(3))
        x = torch.randn(2, 3, 7, 7)
        upstream = torch.randn(2, 6, 7, 7)
        weight = module.dense_weight().requires_grad_(True)
        F.conv2d(x, weight, None, padding=1).backward(upstream)
    obs = _observe(module, x, upstream)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    method = methods.create("gse", module, opt, total_steps=10, sampler=sampler, gamma=1.5)
    layer = method.layers[0]
    layer.observed = obs
    found = method.candidates(layer, step=0)
    lin = found.linear(torch.arange(len(found)))
    active = set(module.layout.linear_indices().tolist())
    assert len(found) <= math.ceil(1.5 * layer.nnz)
    assert bool((lin[1:] > lin[:-1]).all()) and not set(lin.tolist()) & active
    assert torch.allclose(found.scores, weight.grad.reshape(-1)[lin].abs(), rtol=1e-5, atol=1e-6)
