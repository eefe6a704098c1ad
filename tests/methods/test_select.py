"""Counts from fractions (D4) and top-k / bottom-k with ties to the lower index."""
from __future__ import annotations

import pytest
import torch

from sparsetrain.errors import ConfigError
from sparsetrain.methods.select import bottom_k, count_of, top_k


def test_count_rounding_rules():
    assert count_of(0.25, 10) == 3           # 2.5 rounds half up
    assert count_of(0.25, 10, "floor") == 2 and count_of(0.25, 10, "ceil") == 3
    assert count_of(0.3, 10, "ceil") == 3    # 3.0000000000000004 is 3, not 4
    assert count_of(0.0, 1000) == 0
    with pytest.raises(ConfigError, match="k_rounding"):
        count_of(0.1, 10, "up")


def test_top_k_ties_go_to_lower_index():
    scores = torch.tensor([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.0])
    assert top_k(scores, 3).tolist() == [1, 2, 3]
    assert top_k(scores, 4).tolist() == [1, 2, 3, 4]
    assert bottom_k(scores, 2).tolist() == [0, 6]
    assert bottom_k(torch.zeros(5), 2).tolist() == [0, 1]
    assert top_k(scores, 0).numel() == 0 and top_k(scores, 99).tolist() == list(range(7))


def test_top_k_matches_stable_sort():
    for seed in range(5):
        scores = torch.randint(0, 6, (200,), generator=torch.Generator().manual_seed(seed)).float()
        ref = torch.sort(torch.sort(scores, descending=True, stable=True).indices[:37]).values
        assert torch.equal(top_k(scores, 37), ref)
