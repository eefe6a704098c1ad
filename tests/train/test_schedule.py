import math

import pytest

from sparsetrain.train.schedule import LRSchedule

CFG = {"name": "multistep", "warmup_epochs": 5, "warmup_start_factor": 1e-4, "milestones": [80, 120],
       "gamma": 0.1, "min_lr_factor": 0.0}


def test_paper_multistep_with_warmup():
    """gse.md §3: 5-epoch linear warm-up from 1e-4·lr, ×0.1 at epochs 80 and 120."""
    s = LRSchedule.from_config(CFG, total_steps=200 * 10, steps_per_epoch=10)
    assert s.warmup_steps == 50 and tuple(s.milestone_steps) == (800, 1200)
    assert s.factor(0) == pytest.approx(1e-4)
    assert s.factor(25) == pytest.approx(1e-4 + (1 - 1e-4) * 0.5)
    assert s.factor(50) == 1.0 and s.factor(799) == 1.0
    assert s.factor(800) == pytest.approx(0.1) and s.factor(1199) == pytest.approx(0.1)
    assert s.factor(1200) == pytest.approx(0.01) and s.factor(1999) == pytest.approx(0.01)


def test_cosine_endpoints_and_midpoint():
    s = LRSchedule.from_config({**CFG, "name": "cosine", "warmup_epochs": 1, "min_lr_factor": 0.1},
                               total_steps=110, steps_per_epoch=10)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.factor(110) == pytest.approx(0.1)
    factors = [s.factor(t) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_constant_without_warmup():
    s = LRSchedule.from_config({**CFG, "name": "constant", "warmup_epochs": 0}, total_steps=7, steps_per_epoch=3)
    assert [s.factor(t) for t in range(7)] == [1.0] * 7
