"""MEST (Yuan et al., NeurIPS 2021): Elastic Mutation and the Soft Memory Bound (methods/mest.md §2).

Every ΔT of training each layer drops its least important active units, S = ‖w_unit‖₂ + λ·‖g_unit‖₂ over
the active entries only, and regrows units uniformly at random among those then inactive, at value 0
(Elastic Mutation, EM); the mutation ratio falls by stage, (r, r/2, 0). With ``soft_memory_bound`` an update
first prunes back to the budget, then grows an overshoot (Δ, Δ/2, 0) that trains for one interval before it
must compete (EM&S). A unit is one weight (``scheme="irregular"``) or ``block_rows`` consecutive output
rows × one input column (``scheme="block"``); either way the layer stores only its active entries.

Updates act *before the forward* of step t_i = floor(i·ΔT·T), i = 0 included (§2.3): the engine runs the
update for t_i in ``step()`` right after step t_i − 1, and the one for t_0 = 0 — together with the
initialisation, magnitude pruning of a dense Kaiming-normal draw (§2.1) — when the method is created.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any

import torch

from ..errors import ConfigError, check_bool, check_choice, check_int, check_number
from ..layout import MaskedLayout
from .base import Layer, Method, Plan
from .candidates import uniform_inactive
from .registry import register
from .select import bottom_k, count_of, top_k

SCHEMES = ("irregular", "block")
INITS = ("magnitude", "random", "keep")
_INIT_STREAM = 1       # generator(seed, 0, layer, _INIT_STREAM) draws the initialisation
_INIT_CHUNK_BYTES = 16 << 20  # the dense init draw exists one row chunk of at most this size at a time


def active_ratio(ratio_of_all: float, sparsity: float) -> float:
    """A ratio given as a fraction of all weights as a fraction of the active ones (§2.4, D2):
    m_active = m_all / (1 − s); 0.02 of all at s = 0.9 is 0.2 of the active weights."""
    return ratio_of_all / (1.0 - sparsity)


def _exact(value: Any, field: str) -> Fraction:
    """A number as an exact fraction (floats by their decimal form, so 0.7 · 100 is exactly 70)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{field} must be a finite number, got {value!r}")
    return Fraction(int(value)) if isinstance(value, numbers.Integral) else Fraction(repr(float(value)))


class _Units:
    """The units of one layer: ``rows`` consecutive output rows × one column (rows = 1: single weights).

    A unit is addressed by its linear index ``group · n_in + col`` over (n_out / rows) × n_in units; every
    unit is fully active or fully inactive, so the active units are the entries of each group's first row.
    """

    def __init__(self, layer: Layer, rows: int):
        self.layer, self.rows = layer, rows
        n_out, self.n_in = layer.shape
        self.total = (n_out // rows) * self.n_in

    def active(self) -> torch.Tensor:
        """Sorted linear indices of the active units."""
        if self.rows == 1:
            return self.layer.active()
        crow, col = self.layer.active_csr()
        firsts = torch.arange(0, self.layer.shape[0], self.rows, device=col.device)
        counts = (crow[firsts + 1] - crow[firsts]).long()
        entry = _ranges(crow[firsts].long(), counts)
        group = torch.repeat_interleave(torch.arange(firsts.numel(), device=col.device), counts)
        return group * self.n_in + col[entry].long()

    def unit_of_entry(self) -> torch.Tensor:
        """For every active entry (slot order), the slot of its unit in :meth:`active` order."""
        crow, _ = self.layer.active_csr()
        crow = crow.long()
        row = torch.repeat_interleave(torch.arange(self.layer.shape[0], device=crow.device), crow.diff())
        first = crow[(row // self.rows) * self.rows]          # entries before the unit's group, = rows · units
        return first // self.rows + (torch.arange(row.numel(), device=crow.device) - crow[row])

    def norms(self, per_entry: torch.Tensor, unit_of_entry: torch.Tensor | None) -> torch.Tensor:
        """‖·‖₂ of a per-entry quantity over each active unit (|·| for single weights)."""
        if unit_of_entry is None:
            return per_entry.abs()
        sums = torch.zeros(per_entry.numel() // self.rows, dtype=per_entry.dtype, device=per_entry.device)
        return sums.index_add_(0, unit_of_entry, per_entry * per_entry).sqrt_()

    def entry_slots(self, unit_slots: torch.Tensor, unit_of_entry: torch.Tensor | None) -> torch.Tensor:
        """Sorted slots of every entry of the given active units."""
        if unit_of_entry is None:
            return unit_slots
        chosen = torch.zeros(self.layer.nnz // self.rows, dtype=torch.bool, device=unit_slots.device)
        chosen[unit_slots] = True
        return torch.nonzero(chosen[unit_of_entry]).flatten()

    def entries(self, units: torch.Tensor, values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sorted entry linear indices of ``units`` (and ``values`` (units, rows) in that order)."""
        if self.rows == 1:
            return units, (None if values is None else values.reshape(-1))
        group, col = units // self.n_in, units % self.n_in
        rows = group[:, None] * self.rows + torch.arange(self.rows, device=units.device)[None, :]
        lin, order = torch.sort((rows * self.n_in + col[:, None]).reshape(-1))
        return lin, (None if values is None else values.reshape(-1)[order])


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Concatenated aranges [starts[i], starts[i] + counts[i])."""
    offsets = torch.cumsum(counts, 0) - counts
    within = torch.arange(int(counts.sum()), device=starts.device) - torch.repeat_interleave(offsets, counts)
    return torch.repeat_interleave(starts, counts) + within


@register
class MEST(Method):
    """Elastic Mutation (default) or EM&S (``soft_memory_bound=True``) on the layers' budgets n_l.

    The budget n_l of a layer is its active unit count when the method is created (sparsify sets it); ratios
    are fractions of n_l (``ratio_units="all"``: of all weights, converted per layer, D2). Positions (``delta_t``,
    ``stage_bounds``) follow the library rule — float = fraction of the run, int = steps — or are epochs
    with ``granularity="epoch"`` (the reference: delta_t=5, stage_bounds=[90, 120]). Update statistics
    report ``step`` as the step after which the update ran (−1: the one at creation).
    """

    name = "mest"
    parameters = {
        "mutation_ratio": 0.2,              # r: stage ratios (r, r/2, 0), fraction of active units
        "delta_t": 5 / 160,                 # update interval ΔT
        "stage_bounds": [90 / 160, 120 / 160],
        "granularity": "step",              # 'step' (float = fraction, int = steps) or 'epoch'
        "steps_per_epoch": None,            # needed by granularity='epoch' (the trainer fills it)
        "soft_memory_bound": False,         # EM&S
        "smb_overshoot": None,              # Δ: overshoot (Δ, Δ/2, 0); None = mutation_ratio (D5)
        "ratio_units": "active",            # 'active' or 'all' (reference: fractions of all weights)
        "lam": 0.0,                         # λ of S = ‖w‖ + λ‖g‖
        "score_grad": "last_backward",      # g: gradient of the last backward (D4), or 'none' (reference)
        "scheme": "irregular",
        "block_rows": 4,
        "init": "magnitude",                # 'magnitude' (reference), 'random', or 'keep' sparsify's weights
        "exclude_pruned": False,            # D6: growth may re-draw a just-pruned unit unless True
    }

    def __init__(self, model, optimizer, *, total_steps: int, seed: int = 0, **hyperparameters: Any):
        super().__init__(model, optimizer, total_steps=total_steps, seed=seed, **hyperparameters)
        if self.init != "keep":
            for layer in self.layers:
                self._initialise(layer)
        self.budget = [self.units(layer).active().numel() for layer in self.layers]
        self._check_budgets()
        self._update(-1)  # t_0 = 0: the first mutation acts on the initial weights

    # --- configuration ------------------------------------------------------------------------------------
    def _configure_schedule(self) -> None:
        hp = self.hp
        self.granularity = check_choice(hp["granularity"], "granularity", ("step", "epoch"))
        if self.granularity == "epoch":
            if hp["steps_per_epoch"] is None:
                raise ConfigError("granularity='epoch' needs steps_per_epoch (an int >= 1); got steps_per_epoch=None")
            self.steps_per_epoch = check_int(hp["steps_per_epoch"], "steps_per_epoch", 1)
        interval = self._position(hp["delta_t"], "delta_t")
        if interval < 1:
            raise ConfigError(f"delta_t must resolve to at least 1 step, got {hp['delta_t']!r} (= {float(interval):.3g} "
                              f"of {self.total_steps} steps)")
        bounds = hp["stage_bounds"]
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ConfigError(f"stage_bounds must be a list of 2 positions (start of stage 1, start of stage 2), "
                              f"got {bounds!r}")
        self.bounds = [self._position(b, f"stage_bounds[{i}]") for i, b in enumerate(bounds)]
        if self.bounds[0] > self.bounds[1]:
            raise ConfigError(f"stage_bounds must be ascending, got {bounds!r}")
        starts = [math.floor(i * interval) for i in range(math.ceil(self.total_steps / interval) + 1)]
        self.update_starts = [t for t in starts if t < self.total_steps]  # t_i: before the forward of step t_i
        self._later_starts = frozenset(t for t in self.update_starts if t > 0)  # run in step() after step t_i - 1

    def _position(self, value: Any, field: str) -> Fraction:
        """A training position in (fractional) steps."""
        exact = _exact(value, field)
        if exact < 0:
            raise ConfigError(f"{field} must be >= 0, got {value!r}")
        if self.granularity == "epoch":
            return exact * self.steps_per_epoch
        if isinstance(value, numbers.Integral):
            return exact
        if exact > 1:
            raise ConfigError(f"{field} must be a fraction in [0, 1] when given as a float, got {value!r}; give an "
                              "int for an absolute number of steps (or granularity='epoch' for epochs)")
        return exact * self.total_steps

    def configure(self) -> None:
        hp = self.hp
        scheme = hp["scheme"]
        if scheme == "pattern":
            raise ConfigError("scheme='pattern' (MEST's 3x3 kernel patterns) is not implemented yet; allowed: "
                              "'irregular', 'block'")
        self.scheme = check_choice(scheme, "scheme", SCHEMES)
        self.rows = check_int(hp["block_rows"], "block_rows", 1) if self.scheme == "block" else 1
        self.smb = check_bool(hp["soft_memory_bound"], "soft_memory_bound")
        self.ratio = check_number(hp["mutation_ratio"], "mutation_ratio", 0.0, 1.0)
        overshoot = hp["smb_overshoot"]
        self.overshoot = self.ratio if overshoot is None else check_number(overshoot, "smb_overshoot", 0.0,
                                                                           float("inf"))
        self.ratio_units = check_choice(hp["ratio_units"], "ratio_units", ("active", "all"))
        self.lam = check_number(hp["lam"], "lam", 0.0, float("inf"))
        self.score_grad = check_choice(hp["score_grad"], "score_grad", ("last_backward", "none"))
        self.init = check_choice(hp["init"], "init", INITS)
        if self.init == "keep" and self.scheme == "block":
            raise ConfigError("init='keep' keeps sparsify's unstructured topology, which scheme='block' cannot use; "
                              "allowed with block: 'magnitude', 'random'")
        self.exclude_pruned = check_bool(hp["exclude_pruned"], "exclude_pruned")
        if self.smb and self.overshoot > 0 and not any(self.stage(t) == 2 for t in self.update_starts):
            raise ConfigError(f"soft_memory_bound needs an update in stage 2 to return to the budget, but no update "
                              f"(every delta_t={hp['delta_t']!r}) falls at or after stage_bounds[1]="
                              f"{hp['stage_bounds'][1]!r}; lower stage_bounds[1] or delta_t")

    def check_layer(self, layer: Layer) -> None:
        if self.rows > 1 and layer.shape[0] % self.rows:
            raise ConfigError(f"scheme='block' needs every sparse layer's output count divisible by block_rows="
                              f"{self.rows}; layer {layer.name!r} has {layer.shape[0]}")

    def _check_budgets(self) -> None:
        for layer, n in zip(self.layers, self.budget, strict=True):
            units = self.units(layer)
            for stage, ratio in enumerate(self._ratios(layer, self.overshoot if self.smb else self.ratio)):
                extra = count_of(ratio, n) if self.smb else 0
                if ratio > 1 + 1e-12 and not self.smb:
                    raise ConfigError(f"mutation_ratio is {ratio:.4g} of the active units of layer {layer.name!r} "
                                      f"in stage {stage} (ratio_units={self.ratio_units!r}); it must be at most 1")
                if n + extra > units.total:
                    raise ConfigError(f"smb_overshoot={self.overshoot!r}: layer {layer.name!r} would hold {n + extra} "
                                      f"active units, more than its {units.total}")

    # --- schedule -----------------------------------------------------------------------------------------
    def stage(self, t: int) -> int:
        """Stage j of an update before the forward of step t: the number of stage bounds at or before t."""
        return sum(1 for b in self.bounds if t >= b)

    def is_update_step(self, step: int | None = None) -> bool:
        t = self.t if step is None else step
        return t + 1 in self._later_starts

    def _ratios(self, layer: Layer, base: float) -> tuple[float, float, float]:
        """(base, base/2, 0) in fractions of the layer's active units."""
        if self.ratio_units == "all":
            base = active_ratio(base, 1.0 - self.budget[layer.index] * self.rows / layer.total)
        return base, base / 2, 0.0

    def alpha_at(self, step: int) -> float:
        """The stage's mutation ratio (EM) or overshoot (EM&S) of the update after ``step``, as given."""
        base = self.overshoot if self.smb else self.ratio
        return (base, base / 2, 0.0)[self.stage(step + 1)]

    # --- one update -----------------------------------------------------------------------------------------
    def units(self, layer: Layer) -> _Units:
        return _Units(layer, self.rows)

    def scores(self, layer: Layer, units: _Units, unit_of_entry: torch.Tensor | None, t: int) -> torch.Tensor:
        """S = ‖w_unit‖ + λ·‖g_unit‖ of every active unit (g = 0 at t = 0, or with score_grad='none')."""
        s = units.norms(layer.layout.slot_values(), unit_of_entry)
        if self.lam > 0 and self.score_grad == "last_backward" and t > 0:
            s = s.add_(units.norms(self._active_gradient(layer), unit_of_entry), alpha=self.lam)
        return s

    def _active_gradient(self, layer: Layer) -> torch.Tensor:
        grad = layer.layout.parameter.grad
        if grad is None:
            raise RuntimeError(f"mest with lam={self.lam} scores with the gradient of the last backward, but layer "
                               f"{layer.name!r} has none: call method.step() after loss.backward() and "
                               "optimizer.step(), before zero_grad (or set score_grad='none')")
        if isinstance(layer.layout, MaskedLayout):
            return grad.reshape(-1)[layer.active()]
        return layer.layout.slot_values(grad)

    def plan(self, step: int, alpha: float) -> dict[int, Plan]:
        t = step + 1  # the update acts before the forward of step t
        stage = self.stage(t)
        plans = {}
        for layer in self.layers:
            n, units = self.budget[layer.index], self.units(layer)
            ratio = self._ratios(layer, self.overshoot if self.smb else self.ratio)[stage]
            active_units = layer.nnz // self.rows
            n_drop, n_grow = (active_units - n, count_of(ratio, n)) if self.smb else (count_of(ratio, n),) * 2
            if n_drop == 0 and n_grow == 0:
                continue
            unit_of_entry = None if self.rows == 1 else units.unit_of_entry()
            if self.rows == 1 and (self.lam == 0 or self.score_grad == "none" or t == 0):
                drop = layer.smallest(n_drop)     # |w| without forming it
            else:
                drop = bottom_k(self.scores(layer, units, unit_of_entry, t), n_drop)
            active = units.active()
            if not self.exclude_pruned and drop.numel():
                keep = torch.ones(active.numel(), dtype=torch.bool, device=active.device)
                keep[drop] = False
                active = active[keep]
            grow = uniform_inactive(active, units.total, n_grow, self.generator(t, layer))
            plans[layer.index] = Plan(units.entry_slots(drop, unit_of_entry), units.entries(grow)[0])
        return plans

    # --- initialisation -------------------------------------------------------------------------------------
    def _initialise(self, layer: Layer) -> None:
        """n_l units of a dense Kaiming-normal (fan_out) draw: the largest (magnitude) or random ones (§2.1)."""
        units = self.units(layer)
        n = max(1, round(layer.nnz / self.rows))
        shape = layer.module.weight_shape
        std = math.sqrt(2.0 / (shape[0] * math.prod(shape[2:])))
        generator = self.generator(0, layer, _INIT_STREAM)
        dtype = layer.layout.parameter.dtype
        if self.init == "random":
            chosen = uniform_inactive(layer.active().new_empty(0), units.total, n, generator)
            values = torch.randn(n, self.rows, generator=generator, dtype=dtype, device=chosen.device) * std
        else:
            chosen, values = self._largest_of_dense_draw(layer, n, std, generator, dtype)
        lin, values = units.entries(chosen, values)
        everything = torch.arange(layer.nnz, device=lin.device)
        self._apply(layer, Plan(everything, lin))
        layer.layout.set_slot_values(values)

    def _largest_of_dense_draw(self, layer: Layer, n: int, std: float, generator: torch.Generator,
                               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The n units of largest norm of a dense N(0, std²) draw and their values, streaming over row
        chunks with a running top-n (ties to the lower unit index): O(chunk + n) memory, O(n_out·n_in) time."""
        n_out, n_in = layer.shape
        device = layer.layout.parameter.device
        rows = max(self.rows, (_INIT_CHUNK_BYTES // (4 * n_in)) // self.rows * self.rows)
        best_score = torch.empty(0, dtype=dtype, device=device)
        best_unit = torch.empty(0, dtype=torch.int64, device=device)
        best_values = torch.empty(0, self.rows, dtype=dtype, device=device)
        for r0 in range(0, n_out, rows):
            r1 = min(n_out, r0 + rows)
            chunk = torch.randn(r1 - r0, n_in, generator=generator, dtype=dtype, device=device).mul_(std)
            per_unit = chunk.view(-1, self.rows, n_in).transpose(1, 2).reshape(-1, self.rows)  # (units, rows)
            score = per_unit.norm(dim=1) if self.rows > 1 else per_unit[:, 0].abs()
            pick = top_k(score, min(n, score.numel()))
            best_score = torch.cat((best_score, score[pick]))
            best_unit = torch.cat((best_unit, pick + (r0 // self.rows) * n_in))
            best_values = torch.cat((best_values, per_unit[pick]))
            if best_score.numel() > n:
                keep = top_k(best_score, n)
                best_score, best_unit, best_values = best_score[keep], best_unit[keep], best_values[keep]
        return best_unit, best_values

    # --- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "budget": list(self.budget)}

    def load_state_dict(self, state) -> None:
        budget = state.get("budget")
        if not isinstance(budget, (list, tuple)) or len(budget) != len(self.layers):
            raise ConfigError(f"mest state needs 'budget', one active-unit count per sparse layer "
                              f"({len(self.layers)}), got {budget!r}")
        super().load_state_dict(state)
        self.budget = [int(b) for b in budget]
