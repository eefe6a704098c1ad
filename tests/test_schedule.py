"""Schedules, the position rule (float = fraction, int = steps) and the update predicate (gse.md §5 inv. 8)."""
from __future__ import annotations

import math

import pytest

from sparsetrain.errors import ConfigError
from sparsetrain.schedule import (Constant, Cosine, Linear, StepList, UpdatePredicate, parse_schedule,
                                  resolve_steps)


def test_position_rule():
    assert resolve_steps(0.6, 1000, "t_end") == 600
    assert resolve_steps(1.0, 1000, "t_end") == 1000
    assert resolve_steps(1, 1000, "delta_t") == 1      # an int is absolute, even 1
    assert resolve_steps(250, 1000, "t_end") == 250
    assert resolve_steps(0.0005, 1000, "x") == 1       # round half up
    for bad in (1.5, -0.1, "10", None, True):
        with pytest.raises(ConfigError, match="t_end"):
            resolve_steps(bad, 1000, "t_end")
    with pytest.raises(ConfigError, match="delta_t.*at least 1"):
        resolve_steps(0.0001, 1000, "delta_t", minimum=1)


def test_parse_numbers_and_specs():
    assert parse_schedule(0.3)(5, 10) == 0.3 and isinstance(parse_schedule(2), Constant)
    lin = parse_schedule({"kind": "linear", "start": 1.0, "end": 0.0, "t_begin": 10, "t_end": 0.5}, "lr")
    assert isinstance(lin, Linear)
    assert lin(0, 100) == 1.0 and lin(10, 100) == 1.0 and lin(30, 100) == pytest.approx(0.5)
    assert lin(50, 100) == 0.0 and lin(99, 100) == 0.0
    cos = parse_schedule({"kind": "cosine", "start": 0.3, "end": 0.1})
    assert isinstance(cos, Cosine)
    assert cos(0, 100) == pytest.approx(0.3) and cos(50, 100) == pytest.approx(0.2) and cos(100, 100) == pytest.approx(0.1)
    steps = parse_schedule({"kind": "step", "values": [1.0, 0.1, 0.01], "milestones": [0.5, 75]})
    assert isinstance(steps, StepList)
    assert [steps(t, 100) for t in (0, 49, 50, 74, 75, 99)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    for s in (lin, cos, steps, Constant(0.5)):  # spec round trip
        assert parse_schedule(s.spec()) == s


@pytest.mark.parametrize("bad,match", [
    ({"kind": "exp", "start": 1}, "kind must be one of"),
    ({"kind": "cosine", "start": 1.0}, "needs 'end'"),
    ({"kind": "cosine", "start": 1.0, "end": 0, "stop": 3}, "unknown key"),
    ({"kind": "step", "values": [1, 2], "milestones": []}, "len\\(values\\)"),
    ({"kind": "linear", "start": 1, "end": 0, "t_end": 2.5}, "t_end"),
    ("0.3", "number or a schedule"),
    (float("nan"), "finite"),
])
def test_parse_errors_name_field(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_schedule(bad, "alpha")


def test_update_predicate_steps():
    """Invariant 8: updates exactly at t with (t+1) mod ΔT = 0 and t ≤ T_end."""
    p = UpdatePredicate.from_config(delta_t=10, t_end=0.5, total_steps=100)
    assert p.t_end == 50
    assert [t for t in range(100) if p(t)] == [9, 19, 29, 39, 49]
    assert p.update_steps(100) == [9, 19, 29, 39, 49]
    late = UpdatePredicate.from_config(delta_t=0.1, t_end=1.0, total_steps=100, t_start=30)
    assert late.delta_t == 10 and late.update_steps(100) == [39, 49, 59, 69, 79, 89, 99]


def test_cosine_alpha_matches_gse_formula():
    """Invariant 8: α_t = α at t=0, α/2 at T_end/2, 0 after T_end (via a method's alpha_at)."""
    import torch
    from sparsetrain import SparseLinear, methods
    layer = SparseLinear(8, 8, sparsity=0.5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    m = methods.create("gse", layer, opt, total_steps=1000, alpha=0.3, t_end=0.6, delta_t=100)
    t_end = 600
    assert m.alpha_at(0) == pytest.approx(0.3)
    assert m.alpha_at(t_end // 2) == pytest.approx(0.15)
    assert m.alpha_at(t_end) == pytest.approx(0.0, abs=1e-12)
    assert m.alpha_at(t_end + 1) == 0.0
    for t in (17, 123, 599):
        assert m.alpha_at(t) == pytest.approx(0.15 * (1 + math.cos(math.pi * t / t_end)))
    const = methods.create("gse", layer, opt, total_steps=1000, alpha=0.3, alpha_schedule="constant", t_end=0.6)
    assert const.alpha_at(0) == const.alpha_at(600) == 0.3 and const.alpha_at(601) == 0.0
