"""Hyperparameters as functions of training progress, and the topology-update predicate.

A hyperparameter is a number (constant) or a schedule spec, a dict with a ``kind``:

- ``{"kind": "constant", "value": v}``
- ``{"kind": "linear", "start": a, "end": b, "t_begin": 0, "t_end": 1.0}``
- ``{"kind": "cosine", "start": a, "end": b, "t_begin": 0, "t_end": 1.0}``
- ``{"kind": "step", "values": [v0, v1, ...], "milestones": [m1, ...]}`` (v_i from milestone i on)

Positions in training (``t_begin``, ``t_end``, ``milestones``, and the update predicate's ``delta_t``,
``t_start``, ``t_end``) follow one rule, :func:`resolve_steps`: a **float** is a fraction of the total
number of steps (it must lie in [0, 1]; ``1.0`` is the whole run), an **int** is an absolute step
count. So ``0.6`` means 60 % of training and ``1000`` means step 1000; ``1.5`` is an error.
"""
from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

from .errors import ConfigError

Position = Union[int, float]


def resolve_steps(value: Any, total_steps: int, field_name: str, *, minimum: int = 0) -> int:
    """A training position as an absolute step: int → itself, float in [0, 1] → round(value · total)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{field_name} must be an int (absolute steps) or a float in [0, 1] (fraction of "
                          f"total steps), got {value!r} ({type(value).__name__})")
    if isinstance(value, numbers.Integral):
        steps = int(value)
    else:
        if not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"{field_name} must be a fraction in [0, 1] when given as a float, got {value!r}; "
                              "give an int for an absolute number of steps")
        steps = int(math.floor(float(value) * total_steps + 0.5))
    if steps < minimum:
        raise ConfigError(f"{field_name} must resolve to at least {minimum} step(s), got {value!r} "
                          f"(= {steps} of {total_steps} total steps)")
    return steps


def _check_number(value: Any, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{field_name} must be a finite number, got {value!r}")
    return float(value)


class Schedule(ABC):
    """A value as a function of (step, total_steps)."""

    @abstractmethod
    def __call__(self, step: int, total_steps: int) -> float:
        """The value at 0-based ``step`` of a run of ``total_steps``."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """The plain (JSON-serialisable) spec that :func:`parse_schedule` turns back into this schedule."""

    def values(self) -> list[float]:
        """Every value the schedule can take at its ends (for range checks)."""
        return []


@dataclass(frozen=True)
class Constant(Schedule):
    value: float

    def __call__(self, step: int, total_steps: int) -> float:
        return self.value

    def spec(self) -> dict[str, Any]:
        return {"kind": "constant", "value": self.value}

    def values(self) -> list[float]:
        return [self.value]


@dataclass(frozen=True)
class _Ramp(Schedule):
    start: float
    end: float
    t_begin: Position = 0
    t_end: Position = 1.0

    def progress(self, step: int, total_steps: int) -> float:
        """Fraction of the ramp done at ``step``: 0 before ``t_begin``, 1 from ``t_end`` on."""
        begin = resolve_steps(self.t_begin, total_steps, "t_begin")
        end = resolve_steps(self.t_end, total_steps, "t_end")
        if end <= begin:
            return 0.0 if step < begin else 1.0
        return min(1.0, max(0.0, (step - begin) / (end - begin)))

    def values(self) -> list[float]:
        return [self.start, self.end]


class Linear(_Ramp):
    """Straight line from ``start`` at ``t_begin`` to ``end`` at ``t_end``, flat outside."""

    def __call__(self, step: int, total_steps: int) -> float:
        p = self.progress(step, total_steps)
        return self.start + (self.end - self.start) * p

    def spec(self) -> dict[str, Any]:
        return {"kind": "linear", "start": self.start, "end": self.end, "t_begin": self.t_begin, "t_end": self.t_end}


class Cosine(_Ramp):
    """Half cosine from ``start`` at ``t_begin`` to ``end`` at ``t_end`` (RigL/GSE drop-fraction decay)."""

    def __call__(self, step: int, total_steps: int) -> float:
        p = self.progress(step, total_steps)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * p))

    def spec(self) -> dict[str, Any]:
        return {"kind": "cosine", "start": self.start, "end": self.end, "t_begin": self.t_begin, "t_end": self.t_end}


@dataclass(frozen=True)
class StepList(Schedule):
    """Piecewise constant: ``values[i]`` from ``milestones[i-1]`` on (``values[0]`` before the first)."""

    step_values: tuple[float, ...]
    milestones: tuple[Position, ...] = field(default=())

    def __call__(self, step: int, total_steps: int) -> float:
        value = self.step_values[0]
        for i, milestone in enumerate(self.milestones):
            if step >= resolve_steps(milestone, total_steps, f"milestones[{i}]"):
                value = self.step_values[i + 1]
        return value

    def spec(self) -> dict[str, Any]:
        return {"kind": "step", "values": list(self.step_values), "milestones": list(self.milestones)}

    def values(self) -> list[float]:
        return list(self.step_values)


_KINDS = ("constant", "linear", "cosine", "step")


def parse_schedule(value: Any, field_name: str = "value") -> Schedule:
    """A number, a schedule spec dict, or a :class:`Schedule` → a :class:`Schedule`."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return Constant(_check_number(value, field_name))
    if not isinstance(value, Mapping):
        raise ConfigError(f"{field_name} must be a number or a schedule dict with a 'kind' "
                          f"({', '.join(_KINDS)}), got {value!r}")
    kind = value.get("kind")
    allowed_keys = {"constant": {"value"}, "linear": {"start", "end", "t_begin", "t_end"},
                    "cosine": {"start", "end", "t_begin", "t_end"}, "step": {"values", "milestones"}}
    if kind not in allowed_keys:
        raise ConfigError(f"{field_name}.kind must be one of {', '.join(map(repr, _KINDS))}; got {kind!r}")
    extra = set(value) - allowed_keys[kind] - {"kind"}
    if extra:
        raise ConfigError(f"{field_name}: unknown key(s) {sorted(extra)} for kind {kind!r}; allowed: "
                          f"{sorted(allowed_keys[kind])}")
    if kind == "constant":
        if "value" not in value:
            raise ConfigError(f"{field_name}: kind 'constant' needs 'value'")
        return Constant(_check_number(value["value"], f"{field_name}.value"))
    if kind in ("linear", "cosine"):
        for key in ("start", "end"):
            if key not in value:
                raise ConfigError(f"{field_name}: kind {kind!r} needs {key!r}")
        t_begin, t_end = value.get("t_begin", 0), value.get("t_end", 1.0)
        for key, pos in (("t_begin", t_begin), ("t_end", t_end)):
            resolve_steps(pos, 1, f"{field_name}.{key}")
        cls = Linear if kind == "linear" else Cosine
        return cls(_check_number(value["start"], f"{field_name}.start"),
                   _check_number(value["end"], f"{field_name}.end"), t_begin, t_end)
    values: Sequence[Any] = value.get("values", ())
    milestones: Sequence[Any] = value.get("milestones", ())
    if not isinstance(values, Sequence) or not isinstance(milestones, Sequence) or len(values) != len(milestones) + 1:
        raise ConfigError(f"{field_name}: kind 'step' needs lists 'values' and 'milestones' with "
                          f"len(values) == len(milestones) + 1, got {value!r}")
    for i, m in enumerate(milestones):
        resolve_steps(m, 1, f"{field_name}.milestones[{i}]")
    return StepList(tuple(_check_number(v, f"{field_name}.values[{i}]") for i, v in enumerate(values)),
                    tuple(milestones))


def schedule_spec(value: Any) -> Any:
    """The plain form of a hyperparameter value (numbers stay numbers, schedules become dicts)."""
    return value.spec() if isinstance(value, Schedule) else value


@dataclass(frozen=True)
class UpdatePredicate:
    """Topology updates run after the optimizer step of step t when (t+1) mod ΔT = 0 and t_start ≤ t ≤ t_end."""

    delta_t: int
    t_start: int
    t_end: int

    @classmethod
    def from_config(cls, delta_t: Any, t_end: Any, total_steps: int, t_start: Any = 0) -> "UpdatePredicate":
        """Resolve each position with :func:`resolve_steps` (float = fraction, int = steps)."""
        return cls(resolve_steps(delta_t, total_steps, "delta_t", minimum=1),
                   resolve_steps(t_start, total_steps, "t_start"),
                   resolve_steps(t_end, total_steps, "t_end"))

    def __call__(self, step: int) -> bool:
        return self.t_start <= step <= self.t_end and (step + 1) % self.delta_t == 0

    def update_steps(self, total_steps: int) -> list[int]:
        """Every step of a run of ``total_steps`` at which an update happens."""
        first = self.delta_t - 1
        return [t for t in range(first, min(total_steps - 1, self.t_end) + 1, self.delta_t) if self(t)]
