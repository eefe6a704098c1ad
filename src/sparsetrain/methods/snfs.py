"""SNFS, sparse momentum (Dettmers & Zettlemoyer 2019): momentum decides where to regrow (gse.md §2.6).

Masked-dense layers only (D1): the layers must be MaskedLinear/MaskedConv2d with ``dense_grad=True``
(``sparsify(model, s, layout="masked", dense_grad=True)``) so the optimizer keeps a dense momentum.
The engine re-applies the masks after every optimizer step (in ``step()``).
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..layout import MaskedLayout
from .base import DYNAMIC_DEFAULTS, Layer, Method, Plan
from .registry import register
from .select import count_of, top_k

_ADAM_LIKE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam)


def regrowth_counts(total: int, shares: list[float], capacity: list[int]) -> list[int]:
    """Split ``total`` regrowth over layers by ``shares``, each capped at its ``capacity`` (gse.md §2.6 step 4).

    The excess of capped layers goes to the uncapped ones by share; largest-remainder rounding (ties to
    the lower layer index) makes the counts add up to min(total, Σ capacity) exactly. Layers whose
    shares are all 0 share by capacity.
    """
    total = min(total, sum(capacity))
    alloc = [0.0] * len(shares)
    open_layers = [i for i, c in enumerate(capacity) if c > 0]
    remaining = float(total)
    while open_layers:
        weight = {i: shares[i] for i in open_layers}
        if sum(weight.values()) <= 0:
            weight = {i: float(capacity[i]) for i in open_layers}
        norm = sum(weight.values())
        tentative = {i: remaining * weight[i] / norm for i in open_layers}
        over = [i for i in open_layers if tentative[i] > capacity[i]]
        if not over:
            for i in open_layers:
                alloc[i] = tentative[i]
            break
        for i in over:
            alloc[i] = float(capacity[i])
            remaining -= capacity[i]
            open_layers.remove(i)
    counts = [min(capacity[i], int(math.floor(a + 1e-9))) for i, a in enumerate(alloc)]
    order = sorted(range(len(alloc)), key=lambda i: (-(alloc[i] - counts[i]), i))
    deficit = total - sum(counts)
    while deficit > 0:
        for i in order:
            if deficit and counts[i] < capacity[i]:
                counts[i] += 1
                deficit -= 1
    return counts


@register
class SNFS(Method):
    """Prune ceil(p_t·nnz_l) smallest |θ| per layer; regrow the total by layer momentum share σ_l at the
    inactive entries with the largest |M| (M: SGD momentum, or exp_avg/(√exp_avg_sq + 1e-8) for Adam)."""

    name = "snfs"
    parameters = {**DYNAMIC_DEFAULTS, "alpha": 0.5, "alpha_end": 0.005, "delta_t": "epoch", "t_end": 1.0,
                  "k_rounding": "ceil"}

    def configure(self) -> None:
        opt = self.optimizer
        if isinstance(opt, torch.optim.SGD):
            if any(group.get("momentum", 0) <= 0 for group in opt.param_groups):
                raise ConfigError("snfs needs momentum: torch.optim.SGD with momentum > 0 in every param group")
        elif not isinstance(opt, _ADAM_LIKE):
            raise ConfigError(f"snfs needs an optimizer with momentum: SGD(momentum>0), Adam, AdamW, NAdam or "
                              f"RAdam; got {type(opt).__name__}")

    def check_layer(self, layer: Layer) -> None:
        if not isinstance(layer.layout, MaskedLayout) or not getattr(layer.module, "dense_grad", False):
            raise ConfigError(f"snfs needs masked-dense layers with a dense gradient (D1); layer "
                              f"{layer.name or '<root>'!r} is {type(layer.module).__name__}"
                              f"{'' if isinstance(layer.layout, MaskedLayout) else ' (compressed)'}"
                              f"{' without dense_grad' if isinstance(layer.layout, MaskedLayout) else ''}: use "
                              "sparsify(model, sparsity, layout='masked', dense_grad=True)")

    def momentum(self, layer: Layer) -> torch.Tensor:
        """The flat dense momentum M of a layer (row-major over the (n_out, fan_in) view)."""
        state = self.optimizer.state.get(layer.layout.parameter, {})
        if state.get("momentum_buffer") is not None:
            return state["momentum_buffer"].reshape(-1)
        if "exp_avg" in state and "exp_avg_sq" in state:
            return (state["exp_avg"] / (state["exp_avg_sq"].sqrt() + 1e-8)).reshape(-1)
        raise RuntimeError(f"snfs: no momentum for layer {layer.name or '<root>'!r} yet; is its parameter in the "
                           "optimizer, and did optimizer.step() run before method.step()?")

    def plan(self, step: int, alpha: float) -> dict[int, Plan]:
        prune = [min(layer.nnz, count_of(alpha, layer.nnz, self.k_rounding)) for layer in self.layers]
        if sum(prune) == 0:
            return {}
        magnitude = [self.momentum(layer).abs() for layer in self.layers]
        actives = [layer.active() for layer in self.layers]
        share = [float(m[a].mean()) if a.numel() else 0.0 for m, a in zip(magnitude, actives)]
        if sum(share) <= 0:
            share = [float(p) for p in prune]
        regrow = regrowth_counts(sum(prune), share, [layer.total - layer.nnz for layer in self.layers])
        plans = {}
        for layer, k_drop, k_grow, m, active in zip(self.layers, prune, regrow, magnitude, actives):
            scores = m.clone()
            scores[active] = -1.0  # only positions inactive before the update may grow
            grow = top_k(scores, k_grow)
            plans[layer.index] = Plan(layer.smallest(k_drop), grow[scores[grow] >= 0])
        return plans
