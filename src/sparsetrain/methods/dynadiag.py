"""DynaDiag (Tyagi et al., ICML 2025): learn which K of the P diagonals of each Linear to keep
(methods/dynadiag.md §2.3–2.5).

The layers (DiagonalLinear, from ``sparsify(..., layout="diagonal")``) carry a learnable importance α and
compute only their K selected diagonals, weighted by α̃ = clamp(K · softmax(α / T), 0, 1); α learns through
that weighting (an unselected α only through the softmax normaliser). This method does what is special to
DynaDiag after every optimizer step: anneal T (cosine from ``t_max`` to ``t_min`` over [0, t_freeze]),
re-select Sel = top-K(α) (ties: lower index; a swapped-in diagonal starts at exactly 0 with zeroed optimizer
state under compact storage), and at t_freeze fold α̃ into the values and freeze the selection.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from .. import rng
from ..errors import ConfigError, check_bool, check_choice, check_number
from ..layout.diagonal import STORAGES
from ..nn.diagonal import MODES, DiagonalLinear
from ..schedule import resolve_steps
from .base import Layer, Method
from .registry import register
from .select import top_k

FREEZES = ("at_fraction", "at_start", "never")
_FULL_STORAGE_STREAM = 1  # generator(seed, 0, layer, 1) draws the rows full storage adds


@register
class DynaDiag(Method):
    """Temperature-annealed soft top-K over diagonals, re-selected every step, frozen at ``freeze_at``.

    ``mode="reference"`` computes all P diagonals weighted by α̃ (the public code; dense cost, full storage).
    ``freeze="at_start"`` freezes the initial random selection without folding (static diagonals, an
    ablation); ``"never"`` keeps selecting to the end. Statistics are returned at steps where a layer
    swapped diagonals or froze.
    """

    name = "dynadiag"
    trains_diagonals = True
    parameters = {"mode": "sparse", "storage": None, "t_max": 5.0, "t_min": 0.05, "freeze_at": 0.3,
                  "freeze": "at_fraction", "fold_at_freeze": True, "alpha_weight_decay": False}

    def __init__(self, model, optimizer, *, total_steps: int, seed: int = 0, **hyperparameters: Any):
        super().__init__(model, optimizer, total_steps=total_steps, seed=seed, **hyperparameters)
        for layer in self.layers:
            if self.storage == "full" and layer.layout.storage == "compact":
                self._to_full_storage(layer)
            layer.module.set_mode(self.mode)
        self._check_alpha_decay()
        self._set_temperature(self.t)
        if self.freeze == "at_start":
            for layer in self.layers:
                layer.module.freeze(fold=False)

    def _configure_schedule(self) -> None:
        self.t_freeze = resolve_steps(self.hp["freeze_at"], self.total_steps, "freeze_at", minimum=1)

    def configure(self) -> None:
        hp = self.hp
        self.mode = check_choice(hp["mode"], "mode", MODES)
        storage = hp["storage"] if hp["storage"] is not None else ("full" if self.mode == "reference" else "compact")
        self.storage = check_choice(storage, "storage", STORAGES)
        if self.mode == "reference" and self.storage != "full":
            raise ConfigError("mode='reference' computes all P diagonals and needs storage='full' (or None)")
        self.t_max = check_number(hp["t_max"], "t_max", 0.0, float("inf"), low_open=True)
        self.t_min = check_number(hp["t_min"], "t_min", 0.0, self.t_max, low_open=True)
        self.freeze = check_choice(hp["freeze"], "freeze", FREEZES)
        self.fold = check_bool(hp["fold_at_freeze"], "fold_at_freeze")
        self.alpha_decay = check_bool(hp["alpha_weight_decay"], "alpha_weight_decay")

    def check_layer(self, layer: Layer) -> None:
        if not isinstance(layer.module, DiagonalLinear):
            raise ConfigError(f"method 'dynadiag' trains DiagonalLinear layers only; layer {layer.name!r} is "
                              f"{type(layer.module).__name__}: sparsify with layout='diagonal' (nn.Linear only)")

    def _check_alpha_decay(self) -> None:
        alphas = {id(layer.module.alpha) for layer in self.layers}
        decayed = any(group.get("weight_decay", 0) and any(id(p) in alphas for p in group["params"])
                      for group in self.optimizer.param_groups)
        if decayed and not self.alpha_decay:
            warnings.warn("dynadiag: the optimizer applies weight decay to the diagonal importances α; build its "
                          "groups with sparsetrain.nn.param_groups(model, weight_decay) to exempt them (D3), or "
                          "set alpha_weight_decay=True to keep it", stacklevel=3)

    @torch.no_grad()
    def _to_full_storage(self, layer: Layer) -> None:
        """(K, D) → (P, D): the kept rows in place, the others drawn from the same U(±1/√D) law."""
        layout = layer.layout
        if any(torch.is_tensor(v) and v.shape == layout.values.shape for v in self.optimizer.state.get(layout.values, {}).values()):
            raise ConfigError("storage='full' must be chosen before the optimizer holds state for the layer values")
        generator = rng.generator(self.seed, 0, layer.index, _FULL_STORAGE_STREAM)
        bound = 1.0 / math.sqrt(layout.length)
        full = (torch.rand(layout.n_diagonals, layout.length, generator=generator) * 2 - 1) * bound
        full = full.to(layout.values.dtype).to(layout.values.device)
        full[layout.offsets] = layout.values.data
        layout.values.data = full
        layout.storage = "full"

    # --- schedule ---------------------------------------------------------------------------------------
    def temperature_at(self, step: int) -> float:
        """T(t) = T_min + (T_max − T_min)/2 · (1 + cos(π t / t_freeze)) up to t_freeze, T_min after."""
        if step >= self.t_freeze:
            return self.t_min
        return self.t_min + (self.t_max - self.t_min) * 0.5 * (1.0 + math.cos(math.pi * step / self.t_freeze))

    def _set_temperature(self, step: int) -> None:
        for layer in self.layers:
            layer.module.temperature.fill_(self.temperature_at(step))

    def is_update_step(self, step: int | None = None) -> bool:
        """Selections may change after every optimizer step until the freeze."""
        return not all(bool(layer.module.frozen) for layer in self.layers)

    # --- the step -----------------------------------------------------------------------------------------
    def step(self, score_closure=None) -> dict[str, Any] | None:
        """After ``optimizer.step()``: re-select every unfrozen layer's top-K, freeze at t_freeze, set T(t + 1)."""
        t = self.t
        per_layer, changed = {}, False
        freezing = self.freeze == "at_fraction" and t + 1 == self.t_freeze
        for layer in self.layers:
            module = layer.module
            entry = {"nnz": layer.nnz, "swaps": 0, "pruned": 0, "grown": 0, "turnover": 0.0, "frozen": bool(module.frozen)}
            if not bool(module.frozen):
                swaps = self._reselect(layer)
                entry.update(swaps=swaps, pruned=swaps * layer.layout.length, grown=swaps * layer.layout.length,
                             turnover=swaps / layer.layout.diagonals)
                if freezing:
                    module.freeze(fold=self.fold)
                    entry["frozen"] = True
                changed = changed or swaps > 0 or freezing
            per_layer[layer.name] = entry
        self.t = t + 1
        self._set_temperature(self.t)
        if not changed:
            return None
        grown = sum(e["grown"] for e in per_layer.values())
        nnz = sum(layer.nnz for layer in self.layers)
        self.updates += 1
        self.pruned_total += grown
        self.grown_total += grown
        self.last_stats = {"step": t, "temperature": self.temperature_at(t), "swaps": sum(e["swaps"] for e in per_layer.values()),
                           "frozen": freezing, "pruned": grown, "grown": grown, "turnover": grown / max(1, nnz),
                           "nnz": nnz, "layers": per_layer}
        return self.last_stats

    def _reselect(self, layer: Layer) -> int:
        """Sel ← top-K(α) (ties: lower index); returns how many diagonals came in."""
        layout = layer.layout
        chosen = top_k(layer.module.alpha.detach(), layout.diagonals)
        incoming = int((~torch.isin(chosen, layout.offsets)).sum())
        if incoming:
            param = layout.parameter
            state = self.optimizer.state.get(param) or {}
            keys = [key for key, value in state.items() if torch.is_tensor(value) and value.shape == param.shape]
            remap = layout.select(chosen, carry=[state[key] for key in keys])
            for key, value in zip(keys, remap.carried, strict=True):
                state[key] = value
        return incoming
