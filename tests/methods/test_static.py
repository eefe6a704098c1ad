"""Static (inv. 12): the topology never changes and no observer is ever armed."""
from __future__ import annotations

import torch

from gse_testing import run


def test_static_keeps_indices_identical():
    model, _, method, history = run("static", "conv", 5)
    assert all(torch.equal(a, b) for step in history for a, b in zip(step, history[0]))
    assert method.updates == 0 and all(layer.module.backward_observer is None for layer in method.layers)
    masked, _, _, masked_history = run("static", "masked_linear", 3)
    assert all(torch.equal(a, b) for step in masked_history for a, b in zip(step, masked_history[0]))
