"""The public entry points: create / available / hyperparameters, validation, determinism, resume."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from gse_testing import OPTIMIZERS, make_model, run, topology, train_step
from sparsetrain import SparseLinear, methods
from sparsetrain.errors import ConfigError


def test_available_and_hyperparameters():
    assert methods.available() == ["dynadiag", "gse", "mest", "rigl", "set", "snfs", "static"]
    gse = methods.hyperparameters("gse")
    for key in ("alpha", "alpha_schedule", "delta_t", "t_end", "gamma", "sampler", "scope", "exhaustive_density",
                "score_batches", "k_rounding"):
        assert key in gse
    assert (gse["alpha"], gse["delta_t"], gse["t_end"], gse["gamma"], gse["sampler"], gse["scope"]) == \
        (0.2, 1000, 0.6, 1.0, "uniform", "local")
    rigl = methods.hyperparameters("rigl")
    assert (rigl["alpha"], rigl["delta_t"], rigl["t_end"], rigl["block_mib"]) == (0.3, 100, 0.75, 64.0)
    assert methods.hyperparameters("set")["set_prune"] == "magnitude"
    assert methods.hyperparameters("snfs")["alpha_end"] == 0.005
    assert methods.hyperparameters("static") == {}
    gse["alpha"] = 9  # a copy: the table itself is unchanged
    assert methods.hyperparameters("gse")["alpha"] == 0.2


def _layer_and_opt():
    layer = SparseLinear(8, 8, sparsity=0.5)
    return layer, torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("name,kwargs,match", [
    ("lottery", {}, "method must be one of 'dynadiag', 'gse', 'mest', 'rigl', 'set', 'snfs', 'static'; got 'lottery'"),
    ("gse", {"gama": 1.0}, r"unknown hyperparameter\(s\) \['gama'\] for method 'gse'; allowed: .*gamma"),
    ("static", {"alpha": 0.1}, "allowed: none"),
    ("gse", {"sampler": "best"}, "sampler must be one of 'uniform', 'grabo', 'graest'; got 'best'"),
    ("gse", {"scope": "world"}, "scope must be one of"),
    ("gse", {"alpha": 1.5}, r"alpha must be in \[0.0, 1.0\], got 1.5"),
    ("gse", {"gamma": 0}, "gamma must be in \\(0.0"),
    ("gse", {"delta_t": 0}, "delta_t must resolve to at least 1"),
    ("gse", {"delta_t": "epoch"}, "delta_t='epoch' needs steps_per_epoch"),
    ("gse", {"t_end": 2.0}, "t_end must be a fraction in \\[0, 1\\]"),
    ("gse", {"k_rounding": "nearest"}, "k_rounding must be one of 'round', 'floor', 'ceil'"),
    ("gse", {"score_batches": -1}, "score_batches must be an integer >= 0"),
    ("gse", {"alpha": {"kind": "cosine", "start": 0.3, "end": 0.0}, "alpha_schedule": "constant"},
     "alpha_schedule applies to a number alpha"),
    ("rigl", {"block_mib": 0}, "block_mib must be in \\(0.0"),
    ("rigl", {"allow_regrow_pruned": "yes"}, "allow_regrow_pruned must be True or False"),
    ("set", {"delta_t": 10, "set_prune": "random"}, "set_prune must be one of 'magnitude', 'sign_split'"),
])
def test_bad_configuration_names_field_value_and_allowed(name, kwargs, match):
    layer, opt = _layer_and_opt()
    with pytest.raises(ConfigError, match=match):
        methods.create(name, layer, opt, total_steps=100, **kwargs)


def test_bad_model_optimizer_and_steps():
    layer, opt = _layer_and_opt()
    with pytest.raises(ConfigError, match="no sparse layer.*sparsify"):
        methods.create("gse", nn.Linear(3, 3), opt, total_steps=10)
    with pytest.raises(ConfigError, match="optimizer must be a torch.optim.Optimizer"):
        methods.create("gse", layer, object(), total_steps=10)
    with pytest.raises(ConfigError, match="total_steps must be an integer >= 1"):
        methods.create("gse", layer, opt, total_steps=0)


def test_schedule_valued_hyperparameters_and_epoch_interval():
    layer, opt = _layer_and_opt()
    m = methods.create("gse", layer, opt, total_steps=100, delta_t="epoch", steps_per_epoch=7, t_end=1.0,
                       alpha={"kind": "linear", "start": 0.4, "end": 0.0}, gamma={"kind": "step", "values": [1, 2],
                                                                                  "milestones": [0.5]})
    assert m.predicate.delta_t == 7 and m.is_update_step(6) and not m.is_update_step(7)
    assert m.alpha_at(0) == pytest.approx(0.4) and m.alpha_at(50) == pytest.approx(0.2)
    assert m.gamma(10, 100) == 1.0 and m.gamma(60, 100) == 2.0


def test_step_returns_json_statistics_only_at_update_steps():
    import json
    model = make_model("linear")
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    method = methods.create("gse", model, opt, total_steps=6, delta_t=3, t_end=1.0)
    results = []
    for t in range(6):
        train_step(model, opt, "linear", t)
        results.append(method.step())
    assert [r is not None for r in results] == [False, False, True, False, False, True]
    stats = results[2]
    json.dumps(stats)
    assert stats["step"] == 2 and stats["pruned"] == stats["grown"] > 0
    assert set(stats) >= {"step", "alpha", "pruned", "grown", "turnover", "nnz", "seconds", "layers"}
    assert list(stats["layers"]) == ["0", "2"]
    for entry in stats["layers"].values():
        assert set(entry) >= {"nnz", "pruned", "grown", "turnover", "seconds", "candidates"}
    assert stats["turnover"] == pytest.approx(stats["grown"] / stats["nnz"])
    assert method.updates == 2 and method.grown_total == results[2]["grown"] + results[5]["grown"]


@pytest.mark.parametrize("name,hp", [("gse", {}), ("gse", {"scope": "global", "sampler": "grabo"}), ("rigl", {}),
                                     ("set", {})])
def test_same_seed_same_topology_different_seed_different(name, hp):
    """Same data and init: the seed alone decides the random choices. RigL makes none, so its seed is moot."""
    a = run(name, "linear", 6, seed=1, delta_t=2, t_end=1.0, **hp)[3]
    b = run(name, "linear", 6, seed=1, delta_t=2, t_end=1.0, **hp)[3]
    c = run(name, "linear", 6, seed=2, delta_t=2, t_end=1.0, **hp)[3]
    assert all(torch.equal(x, y) for sa, sb in zip(a, b) for x, y in zip(sa, sb))
    differs = any(not torch.equal(x, y) for sa, sc in zip(a, c) for x, y in zip(sa, sc))
    assert differs == (name != "rigl")


@pytest.mark.parametrize("name,kind,hp", [("gse", "linear", {"scope": "global"}), ("rigl", "conv", {}),
                                          ("set", "linear", {}), ("snfs", "masked_linear", {})])
def test_state_dict_round_trip_resumes_identically(name, kind, hp):
    """Stop after 3 of 8 steps, save model/optimizer/method, restore into fresh objects, continue: the run
    equals the uninterrupted one exactly (topology and values); the method state loads with weights_only."""
    steps, stop = 8, 3
    hp = dict(hp, delta_t=2, t_end=1.0)
    reference_model, _, _, _ = run(name, kind, steps, optimizer="adam", **hp)

    model = make_model(kind, dense_grad=(name == "snfs"))
    opt = OPTIMIZERS["adam"](model.parameters())
    method = methods.create(name, model, opt, total_steps=steps, **hp)
    for t in range(stop):
        train_step(model, opt, kind, t)
        method.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    fresh = make_model(kind, seed=5, dense_grad=(name == "snfs"))  # another init: everything must come from the file
    fresh.load_state_dict(saved["model"])
    fresh_opt = OPTIMIZERS["adam"](fresh.parameters())
    fresh_opt.load_state_dict(saved["opt"])
    resumed = methods.create(name, fresh, fresh_opt, total_steps=steps, **hp)
    resumed.load_state_dict(saved["method"])
    assert resumed.t == stop
    for t in range(stop, steps):
        train_step(fresh, fresh_opt, kind, t)
        resumed.step()
    for x, y in zip(topology(reference_model), topology(fresh)):
        assert torch.equal(x, y)
    for (kx, x), (ky, y) in zip(reference_model.state_dict().items(), fresh.state_dict().items()):
        assert kx == ky and torch.equal(x, y), kx


def test_load_state_dict_refuses_another_run():
    layer, opt = _layer_and_opt()
    m = methods.create("gse", layer, opt, total_steps=100, seed=1)
    other = methods.create("gse", layer, opt, total_steps=100, seed=2)
    with pytest.raises(ConfigError, match="cannot resume: saved seed=1"):
        other.load_state_dict(m.state_dict())
    rigl = methods.create("rigl", layer, opt, total_steps=100, seed=1)
    with pytest.raises(ConfigError, match="saved method='gse'"):
        rigl.load_state_dict(m.state_dict())
    with pytest.raises(ConfigError, match="missing"):
        m.load_state_dict({"step": 3})


def test_update_without_backward_is_a_clear_error():
    layer, opt = _layer_and_opt()
    m = methods.create("gse", layer, opt, total_steps=10, delta_t=1, t_end=1.0)
    with pytest.raises(RuntimeError, match="no backward was observed for layer"):
        m.step()


def test_score_batches_uses_the_closure_and_not_the_training_batch():
    """score_batches=n: observers are not armed for the training backward; the closure runs n times and the
    scores equal those of one backward over the same rows (sums over micro-batches)."""
    model = make_model("linear")
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    m = methods.create("gse", model, opt, total_steps=2, delta_t=2, t_end=1.0, score_batches=2)
    assert all(layer.module.backward_observer is None for layer in m.layers)
    calls = []

    def closure():
        calls.append(1)
        x = torch.randn(3, 12)
        torch.nn.functional.mse_loss(model(x), torch.zeros(3, 6)).backward()

    train_step(model, opt, "linear", 0)
    assert m.step(score_closure=closure) is None and calls == []
    train_step(model, opt, "linear", 1)
    with pytest.raises(ConfigError, match="score_batches=2 needs step\\(score_closure"):
        m.step()
    m.t = 1
    stats = m.step(score_closure=closure)
    assert len(calls) == 2 and stats["grown"] > 0
    assert all(p.grad is None for p in model.parameters())  # extra batches leave no gradient behind


@pytest.mark.parametrize("rule,expected", [("round", 13), ("floor", 12), ("ceil", 13)])
def test_k_rounding_rule_decides_the_count(rule, expected):
    """D4: k = rule(α_t · nnz); here α · nnz = 0.25 · 50 = 12.5 (exhaustive candidates, so k is not capped)."""
    layer = SparseLinear(10, 10, nnz=50)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    m = methods.create("gse", layer, opt, total_steps=1, delta_t=1, t_end=1.0, alpha=0.25,
                       alpha_schedule="constant", k_rounding=rule)
    layer(torch.randn(4, 10)).sum().backward()
    opt.step()
    assert m.is_update_step() and m.step()["grown"] == expected
