"""RigL: blocked dense-gradient top-k (inv. 7) and the reference's regrow-pruned option."""
from __future__ import annotations

import pytest
import torch

from gse_testing import OPTIMIZERS, make_model, train_step
from sparsetrain import methods, rng
from sparsetrain.methods.scores import block_rows_for, blocked_gradient_top_k
from sparsetrain.nn import sparse_layers


def _reference_top_k(parts, active, shape, k):
    """Full dense gradient, actives excluded, stable descending sort: ties to the lower index."""
    grad = sum(gy @ x.t() for x, gy in parts).abs().reshape(-1).double()
    grad[active] = -1
    order = torch.sort(grad, descending=True, stable=True).indices[:k]
    return torch.sort(order[grad[order] >= 0]).values  # k beyond the inactive count: all inactive


@pytest.mark.parametrize("block_rows", [1, 7, 13])
@pytest.mark.parametrize("k", [1, 25, 200])
def test_blocked_top_k_equals_dense_top_k(block_rows, k):
    """Invariant 7 for block sizes 1, 7 and n_out (13), on two micro-batches."""
    shape = (13, 17)
    gen = rng.generator(block_rows, k)
    parts = [(torch.randn(17, 4, generator=gen), torch.randn(13, 4, generator=gen)) for _ in range(2)]
    active = torch.sort(torch.randperm(221, generator=gen)[:60]).values
    got = blocked_gradient_top_k(parts, active, shape, k, block_rows)
    assert torch.equal(got, _reference_top_k(parts, active, shape, k))


def test_blocked_top_k_breaks_ties_to_the_lower_index():
    x = torch.ones(5, 2)
    gy = torch.ones(4, 2)  # every gradient entry equals 2
    active = torch.tensor([0, 6])
    got = blocked_gradient_top_k([(x, gy)], active, (4, 5), 4, block_rows=3)
    assert got.tolist() == [1, 2, 3, 4]


def test_block_rows_budget():
    assert block_rows_for(1 << 20, 4, 64) == 16
    assert block_rows_for(1 << 30, 4, 64) == 1


def test_allow_regrow_pruned_keeps_regrown_entries():
    """With the RigL code's behaviour a just-pruned position may be chosen again: it simply stays, so the
    counts still match and nothing pruned reappears with value 0."""
    model = make_model("linear")
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    m = methods.create("rigl", model, opt, total_steps=4, delta_t=1, t_end=1.0, alpha=0.6, allow_regrow_pruned=True)
    for t in range(4):
        train_step(model, opt, "linear", t)
        before = [l.layout.linear_indices().clone() for l in sparse_layers(model).values()]
        stats = m.step()
        for layer, old, entry in zip(sparse_layers(model).values(), before, stats["layers"].values()):
            new = layer.layout.linear_indices()
            assert layer.nnz == old.numel()
            assert entry["pruned"] == entry["grown"] == int((~torch.isin(new, old)).sum())
