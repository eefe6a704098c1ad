"""gse.md §5 invariants 1, 2, 3 and 11 for every dynamic method, layer kind and optimizer.

Each update is checked against a snapshot taken just before ``method.step()``: counts, set relations
between grown (G), pruned (P) and old active (A_old) positions, exact zeros in the values and in every
parameter-shaped optimizer-state tensor, and that the new dense weight equals the old one with P zeroed
(so the function changes only through the pruned weights).
"""
from __future__ import annotations

import copy

import pytest
import torch

from gse_testing import KINDS, OPTIMIZERS, batch, make_model, train_step
from sparsetrain import methods
from sparsetrain.layout import CompressedLayout
from sparsetrain.methods.select import count_of
from sparsetrain.nn import sparse_layers

CASES = [("set", {}), ("rigl", {}), ("gse", {}), ("gse", {"scope": "global"}), ("gse", {"sampler": "graest"})]


def _snapshot(model, optimizer):
    snap = []
    for module in sparse_layers(model).values():
        layout = module.layout
        snap.append({"lin": layout.linear_indices().clone(), "dense": layout.to_dense().clone(), "nnz": layout.nnz})
    return snap


def _state_tensors(optimizer, param):
    return {k: v for k, v in optimizer.state.get(param, {}).items() if torch.is_tensor(v) and v.shape == param.shape}


def _check_update(model, optimizer, before, stats, scope):
    layers = list(sparse_layers(model).values())
    alpha = stats["alpha"]
    total_old = sum(b["nnz"] for b in before)
    assert sum(m.nnz for m in layers) == total_old  # invariant 1: nnz unchanged (in total)
    if scope == "global":
        assert stats["grown"] == stats["pruned"] <= count_of(alpha, total_old)
    if scope == "per_layer_ceil":  # SNFS prunes ceil(p_t · nnz_l) in each layer
        assert stats["grown"] == stats["pruned"] <= sum(count_of(alpha, b["nnz"], "ceil") for b in before)
    grown_seen = 0
    for module, old, entry in zip(layers, before, stats["layers"].values()):
        layout = module.layout
        new_lin = layout.linear_indices()
        n_in = layout.shape[1]
        # invariant 2: sorted, unique, in range; G ∩ A_old = ∅, P ⊆ A_old, and nothing pruned-and-regrown
        assert bool((new_lin[1:] > new_lin[:-1]).all()) and int(new_lin.min()) >= 0
        assert int(new_lin.max()) < layout.shape[0] * n_in
        in_old = torch.isin(new_lin, old["lin"])
        grown = new_lin[~in_old]
        pruned = old["lin"][~torch.isin(old["lin"], new_lin)]
        assert grown.numel() == entry["grown"] and pruned.numel() == entry["pruned"]
        if scope == "local":  # invariant 1 per layer
            assert layout.nnz == old["nnz"]
            assert entry["grown"] == entry["pruned"] <= count_of(alpha, old["nnz"])
        grown_seen += grown.numel()
        # invariant 3: grown values exactly 0, optimizer state exactly 0 at G (and at P when it still exists)
        dense = layout.to_dense().reshape(-1)
        assert bool((dense[grown] == 0).all())
        param = layout.parameter
        for key, state in _state_tensors(optimizer, param).items():
            if isinstance(layout, CompressedLayout):
                assert state.shape == (layout.nnz,), key
                assert bool((state[~in_old] == 0).all()), key
            else:
                flat = state.reshape(-1)
                assert bool((flat[grown] == 0).all()) and bool((flat[pruned] == 0).all()), key
        # invariant 11: the new weight is the old one with P set to 0
        expected = old["dense"].reshape(-1).clone()
        expected[pruned] = 0
        assert torch.equal(dense, expected)
    assert grown_seen == stats["grown"]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,hp", CASES, ids=[f"{n}-{'-'.join(map(str, h.values())) or 'default'}" for n, h in CASES])
def test_update_invariants(name, hp, kind, optimizer):
    model = make_model(kind)
    opt = OPTIMIZERS[optimizer](model.parameters())
    method = methods.create(name, model, opt, total_steps=6, seed=3, delta_t=2, t_end=1.0, alpha=0.4, **hp)
    updates = 0
    for t in range(6):
        train_step(model, opt, kind, t)
        before = _snapshot(model, opt)
        stats = method.step()
        assert (stats is not None) == ((t + 1) % 2 == 0)
        if stats is not None:
            updates += 1
            assert stats["grown"] > 0
            _check_update(model, opt, before, stats, hp.get("scope", "local"))
    assert updates == 3


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "sgd_nesterov", "adam", "adamw"])
@pytest.mark.parametrize("kind", ["masked_linear", "masked_conv"])
def test_snfs_invariants(kind, optimizer):
    """SNFS moves weights between layers: total nnz constant, G/P relations and zeros as above."""
    model = make_model(kind, dense_grad=True)
    opt = OPTIMIZERS[optimizer](model.parameters())
    method = methods.create("snfs", model, opt, total_steps=4, delta_t=2, t_end=1.0)
    for t in range(4):
        train_step(model, opt, kind, t)
        before = _snapshot(model, opt)
        stats = method.step()
        for module in sparse_layers(model).values():  # masks re-applied: inactive entries exactly 0
            assert torch.equal(module.layout.weight * ~module.layout.mask, torch.zeros_like(module.layout.weight))
        if stats is not None:
            assert stats["pruned"] == stats["grown"] > 0
            _check_update(model, opt, before, stats, "per_layer_ceil")


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_update_changes_outputs_only_through_pruned_weights(kind):
    """Invariant 11 on the model output: after the update it equals the old model with P zeroed."""
    model = make_model(kind)
    opt = OPTIMIZERS["adam"](model.parameters())
    method = methods.create("gse", model, opt, total_steps=2, delta_t=2, t_end=1.0, alpha=0.5)
    probe, _ = batch(kind, 99)
    for t in range(2):
        train_step(model, opt, kind, t)
        if t == 1:
            old = copy.deepcopy(model)
            old_lin = [m.layout.linear_indices().clone() for m in sparse_layers(old).values()]
        method.step()
    with torch.no_grad():
        for old_layer, lin, new_layer in zip(sparse_layers(old).values(), old_lin, sparse_layers(model).values()):
            pruned_slots = torch.nonzero(~torch.isin(lin, new_layer.layout.linear_indices())).flatten()
            assert pruned_slots.numel() > 0
            old_layer.layout.values[pruned_slots] = 0
        assert torch.allclose(model(probe), old(probe), rtol=1e-6, atol=1e-6)
