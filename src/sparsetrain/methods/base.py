"""The one prune/grow engine every dynamic-sparse-training method runs on (DESIGN.md §2, gse.md §2.3, §4).

A method subclass says only what is special to it: how it scores and what it selects, as a
:class:`Plan` per layer (slots to drop, positions to grow). This base owns everything shared:

- the step counter and the update predicate ((t+1) mod ΔT = 0 and t_start ≤ t ≤ T_end);
- the drop fraction α_t (cosine or constant, gse.md §2.3) and k = rule(α_t · nnz) (D4);
- arming the layers' backward observers before the backward of an update step, so scores come from
  the current batch (DESIGN.md §3), or running ``score_batches`` extra batches through a closure;
- exact-zero growth through ``layout.replace`` and carrying every parameter-shaped optimizer-state
  tensor of ANY ``torch.optim`` optimizer across the change, zero at grown and pruned slots (D8, D9);
- per-update statistics and a ``state_dict`` for an exact resume.

Layers are indexed in ``sparse_layers(model)`` order (module registration order); that index keys the
random generators (seed, step, layer index) (D14) and orders layers in global selections.
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from .. import rng
from ..errors import ConfigError, check_choice, check_int, check_number
from ..layout import DiagonalLayout, MaskedLayout
from ..nn import SparseModule, sparse_layers
from ..schedule import Constant, Cosine, Schedule, UpdatePredicate, parse_schedule, schedule_spec
from .scores import Observed
from .select import K_ROUNDING, bottom_k, count_of

#: Hyperparameters of every dynamic method (a method's own table may change the defaults).
DYNAMIC_DEFAULTS: dict[str, Any] = {
    "alpha": 0.2,               # drop fraction at t = 0 (number or schedule spec)
    "alpha_schedule": "cosine",  # 'cosine' (to alpha_end at T_end) or 'constant'; only for a number alpha
    "alpha_end": 0.0,           # value the cosine reaches at T_end (SNFS: 0.005)
    "delta_t": 1000,            # update interval: int steps, float fraction of the run, or 'epoch'
    "t_start": 0,               # first step that may update (int steps or float fraction)
    "t_end": 0.6,               # last step that may update (int steps or float fraction)
    "k_rounding": "round",      # k = round / floor / ceil of α_t · nnz (D4)
    "steps_per_epoch": None,    # needed only when delta_t == 'epoch'
}
#: Extra hyperparameters of methods that score growth with the batch gradient (GSE, RigL).
GRADIENT_DEFAULTS: dict[str, Any] = {"score_batches": 0}

ScoreClosure = Callable[[], Any]


@dataclass
class Layer:
    """One sparse layer as the engine sees it."""

    index: int
    name: str
    module: SparseModule
    observed: Observed | None = None

    @property
    def layout(self):
        return self.module.layout

    @property
    def shape(self) -> tuple[int, int]:
        return self.module.layout.shape

    @property
    def total(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nnz(self) -> int:
        return self.module.layout.nnz

    def active(self) -> torch.Tensor:
        """Sorted int64 linear indices of the active entries (slot order)."""
        return self.module.layout.linear_indices()

    def active_csr(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row pointers, columns) of the active entries (slot order)."""
        return self.module.layout.active_csr()

    def smallest(self, k: int) -> torch.Tensor:
        """Ascending slots of the k smallest |θ| (ties to the lower slot), without forming |θ|."""
        return bottom_k(self.module.layout.slot_values(), k, absolute=True)

    def parts(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.observed.parts if self.observed is not None else []


@dataclass
class Plan:
    """What one update does to one layer: old slots to drop, sorted inactive positions to grow."""

    drop_slots: torch.Tensor
    grow_lin: torch.Tensor
    candidates: int | None = None
    seconds: float = 0.0


def _plain(value: Any) -> Any:
    """A hyperparameter value in plain form (schedules → dicts, tuples → lists) for state_dict."""
    value = schedule_spec(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Method:
    """Base of all methods. Call :meth:`step` once per training step, right after ``optimizer.step()``."""

    name: ClassVar[str] = ""
    #: Every hyperparameter the method accepts, with its library default.
    parameters: ClassVar[dict[str, Any]] = {}
    #: Whether growth needs the batch's (x_fm, gy_fm) from the layers' backward.
    uses_gradient: ClassVar[bool] = False
    #: Whether the method trains DiagonalLinear layers (they change by whole diagonals, not by entries).
    trains_diagonals: ClassVar[bool] = False

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, total_steps: int, seed: int = 0,
                 **hyperparameters: Any):
        unknown = sorted(set(hyperparameters) - set(self.parameters))
        if unknown:
            allowed = ", ".join(sorted(self.parameters)) or "none"
            raise ConfigError(f"unknown hyperparameter(s) {unknown} for method {self.name!r}; allowed: {allowed}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.total_steps = check_int(total_steps, "total_steps", 1)
        self.seed = check_int(seed, "seed", 0)
        self.model, self.optimizer = model, optimizer
        self.layers = [Layer(i, name, m) for i, (name, m) in enumerate(sparse_layers(model).items())]
        if not self.layers:
            raise ConfigError(f"method {self.name!r}: the model has no sparse layer (SparseLinear, SparseConv2d, "
                              "MaskedLinear, MaskedConv2d); call sparsetrain.sparsify(model, sparsity) first")
        diagonal = [layer.name or "<root>" for layer in self.layers if isinstance(layer.layout, DiagonalLayout)]
        if diagonal and not self.trains_diagonals:
            raise ConfigError(f"method {self.name!r} cannot train the diagonal layer(s) {diagonal}; DiagonalLinear "
                              "layers (sparsify layout='diagonal') are trained by method 'dynadiag'")
        self.hp: dict[str, Any] = {**self.parameters, **hyperparameters}
        self.explicit = frozenset(hyperparameters)
        self.t = 0
        self.updates = 0
        self.pruned_total = 0
        self.grown_total = 0
        self.last_stats: dict[str, Any] | None = None
        self.predicate: UpdatePredicate | None = None
        if self.parameters:
            self._configure_schedule()
        self.configure()
        for layer in self.layers:
            self.check_layer(layer)
        self._arm_for(self.t)

    # --- hooks for subclasses ------------------------------------------------------------------------
    def configure(self) -> None:
        """Validate and store the method's own hyperparameters (``self.hp``)."""

    def check_layer(self, layer: Layer) -> None:
        """Raise ConfigError when the method cannot run on this layer."""

    def plan_layer(self, layer: Layer, k: int, step: int) -> Plan | None:
        """Local scope: what to drop and grow in ``layer`` with k = rule(α_t · nnz) ≥ 1."""
        raise NotImplementedError

    def plan(self, step: int, alpha: float) -> dict[int, Plan]:
        """All layers' plans. Default: each layer on its own (local scope), timed per layer."""
        plans: dict[int, Plan] = {}
        for layer in self.layers:
            k = count_of(alpha, layer.nnz, self.k_rounding)
            if k == 0:
                continue
            start = time.perf_counter()
            plan = self.plan_layer(layer, k, step)
            if plan is not None:
                plan.seconds = time.perf_counter() - start
                plans[layer.index] = plan
        return plans

    # --- configuration -------------------------------------------------------------------------------
    def _configure_schedule(self) -> None:
        hp = self.hp
        self.k_rounding = check_choice(hp["k_rounding"], "k_rounding", K_ROUNDING)
        delta_t = hp["delta_t"]
        if delta_t == "epoch":
            if hp["steps_per_epoch"] is None:
                raise ConfigError("delta_t='epoch' needs steps_per_epoch (an int >= 1); got steps_per_epoch=None")
            delta_t = check_int(hp["steps_per_epoch"], "steps_per_epoch", 1)
        elif isinstance(delta_t, str):
            raise ConfigError(f"delta_t must be an int (steps), a float in (0, 1] (fraction) or 'epoch'; got {delta_t!r}")
        self.predicate = UpdatePredicate.from_config(delta_t, hp["t_end"], self.total_steps, hp["t_start"])
        alpha = hp["alpha"]
        alpha_end = check_number(hp["alpha_end"], "alpha_end", 0.0, 1.0)
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            check_number(alpha, "alpha", 0.0, 1.0)
            kind = check_choice(hp["alpha_schedule"], "alpha_schedule", ("cosine", "constant"))
            self.alpha_schedule: Schedule = (Cosine(float(alpha), alpha_end, 0, self.predicate.t_end)
                                             if kind == "cosine" else Constant(float(alpha)))
        else:
            if "alpha_schedule" in self.explicit:
                raise ConfigError("alpha_schedule applies to a number alpha; alpha is already a schedule "
                                  f"({alpha!r}): drop alpha_schedule")
            self.alpha_schedule = parse_schedule(alpha, "alpha")
            for v in self.alpha_schedule.values():
                check_number(v, "alpha (schedule value)", 0.0, 1.0)

    def alpha_at(self, step: int) -> float:
        """α_t: the drop fraction at step t; 0 after T_end (gse.md §2.3)."""
        if self.predicate is None or step > self.predicate.t_end:
            return 0.0
        return float(self.alpha_schedule(step, self.total_steps))

    @property
    def score_batches(self) -> int:
        return int(self.hp.get("score_batches", 0))

    def is_update_step(self, step: int | None = None) -> bool:
        """Whether ``step()`` at training step ``step`` (default: the coming one) changes the topology."""
        t = self.t if step is None else step
        return self.predicate is not None and self.predicate(t)

    def generator(self, step: int, layer: Layer, *extra: int) -> torch.Generator:
        """The generator of every random choice at (seed, step, layer index) (D14), on the layer's device."""
        return rng.generator(self.seed, step, layer.index, *extra, device=layer.layout.parameter.device)

    # --- the step -------------------------------------------------------------------------------------
    def step(self, score_closure: ScoreClosure | None = None) -> dict[str, Any] | None:
        """Advance one training step; at an update step change the topology and return its statistics.

        Call it after ``optimizer.step()``. ``score_closure`` runs one forward+backward on a fresh batch
        (no optimizer step); it is called ``score_batches`` times at update steps when score_batches > 0
        and ignored otherwise. Afterwards all gradients are cleared (``optimizer.zero_grad()``).
        """
        t = self.t
        self._reapply_masks()
        stats = None
        if self.is_update_step(t):
            if self.uses_gradient and self.score_batches > 0:
                if score_closure is None:
                    raise ConfigError(f"score_batches={self.score_batches} needs step(score_closure=...) at update "
                                      f"steps: a callable running forward+backward on a fresh batch (step {t})")
                self._arm()
                for _ in range(self.score_batches):
                    score_closure()
                self.optimizer.zero_grad(set_to_none=True)
            stats = self._update(t)
        self._disarm()
        self.t = t + 1
        self._arm_for(self.t)
        return stats

    def _update(self, step: int) -> dict[str, Any]:
        start = time.perf_counter()
        if self.uses_gradient:
            missing = [layer.name or "<root>" for layer in self.layers if not layer.parts()]
            if missing:
                raise RuntimeError(f"method {self.name!r} at update step {step}: no backward was observed for "
                                   f"layer(s) {missing}; call method.step() after loss.backward() and "
                                   "optimizer.step() of the same step")
        alpha = self.alpha_at(step)
        nnz_before = {layer.index: layer.nnz for layer in self.layers}
        plans = self.plan(step, alpha)
        per_layer: dict[str, dict[str, Any]] = {}
        for layer in self.layers:
            plan = plans.get(layer.index)
            entry: dict[str, Any] = {"nnz": layer.nnz, "pruned": 0, "grown": 0, "turnover": 0.0, "seconds": 0.0}
            if plan is not None:
                t0 = time.perf_counter()
                if plan.drop_slots.numel() or plan.grow_lin.numel():
                    self._apply(layer, plan)
                entry.update(nnz=layer.nnz, pruned=int(plan.drop_slots.numel()), grown=int(plan.grow_lin.numel()),
                             turnover=plan.grow_lin.numel() / max(1, nnz_before[layer.index]),
                             seconds=plan.seconds + time.perf_counter() - t0)
                if plan.candidates is not None:
                    entry["candidates"] = int(plan.candidates)
            per_layer[layer.name] = entry
        pruned = sum(e["pruned"] for e in per_layer.values())
        grown = sum(e["grown"] for e in per_layer.values())
        self.updates += 1
        self.pruned_total += pruned
        self.grown_total += grown
        self.last_stats = {
            "step": step, "alpha": alpha, "pruned": pruned, "grown": grown,
            "turnover": grown / max(1, sum(nnz_before.values())),
            "nnz": sum(layer.nnz for layer in self.layers),
            "seconds": time.perf_counter() - start, "layers": per_layer,
        }
        return self.last_stats

    def _apply(self, layer: Layer, plan: Plan) -> None:
        """Replace the slots, then carry every parameter-shaped optimizer-state tensor across (D8, D9)."""
        param = layer.layout.parameter
        state = self.optimizer.state.get(param) or {}
        keys = [key for key, value in state.items() if torch.is_tensor(value) and value.shape == param.shape]
        remap = layer.layout.replace(plan.drop_slots, plan.grow_lin, carry=[state[key] for key in keys])
        for key, value in zip(keys, remap.carried, strict=True):  # carried in the same merge as the values
            state[key] = value

    def _reapply_masks(self) -> None:
        """Masked layers: zero inactive entries the optimizer moved (dense gradient, momentum, decay)."""
        for layer in self.layers:
            if isinstance(layer.layout, MaskedLayout):
                layer.layout.apply_mask_()

    # --- observers ------------------------------------------------------------------------------------
    def _arm(self) -> None:
        for layer in self.layers:
            layer.observed = Observed()
            layer.module.backward_observer = layer.observed

    def _disarm(self) -> None:
        for layer in self.layers:
            layer.observed = None
            layer.module.backward_observer = None

    def _arm_for(self, step: int) -> None:
        if self.uses_gradient and self.score_batches == 0 and self.is_update_step(step):
            self._arm()

    # --- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs beyond model and optimizer state (plain types only)."""
        return {"method": self.name, "step": self.t, "seed": self.seed, "total_steps": self.total_steps,
                "hyperparameters": _plain(self.hp), "layers": [layer.name for layer in self.layers],
                "updates": self.updates, "pruned_total": self.pruned_total, "grown_total": self.grown_total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counters; refuses state from another method, seed, run length or layer set."""
        required = ("method", "step", "seed", "total_steps", "hyperparameters", "layers", "updates",
                    "pruned_total", "grown_total")
        missing = [k for k in required if k not in state]
        if missing:
            raise ConfigError(f"method state is missing {missing}; it was not written by Method.state_dict()")
        mine = self.state_dict()
        for key in ("method", "seed", "total_steps", "hyperparameters", "layers"):
            if _plain(state[key]) != mine[key]:
                raise ConfigError(f"cannot resume: saved {key}={state[key]!r} differs from this run's {mine[key]!r}")
        self._disarm()
        self.t = check_int(state["step"], "step", 0)
        self.updates = int(state["updates"])
        self.pruned_total = int(state["pruned_total"])
        self.grown_total = int(state["grown_total"])
        self._arm_for(self.t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(step={self.t}, layers={len(self.layers)}, hyperparameters={_plain(self.hp)})"


class PruneThenGrow(Method):
    """Baselines (SET, RigL): prune k, then grow k among the positions inactive *before* the update,
    so G ∩ P = ∅ (gse.md §2.6, D3). k = min(rule(α_t · nnz), number of inactive positions)."""

    def prune_slots(self, layer: Layer, k: int) -> torch.Tensor:
        """The k active slots with the smallest |θ| (ties to the lower index)."""
        return layer.smallest(k)

    def grow_positions(self, layer: Layer, k: int, step: int) -> torch.Tensor:
        """k sorted positions inactive before the update."""
        raise NotImplementedError

    def plan_layer(self, layer: Layer, k: int, step: int) -> Plan | None:
        k = min(k, layer.total - layer.nnz)
        if k == 0:
            return None
        drop = self.prune_slots(layer, k)
        grow = self.grow_positions(layer, drop.numel(), step)
        return Plan(drop, grow)
