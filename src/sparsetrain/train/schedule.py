"""Learning rate per step: linear warm-up, then constant, multistep or cosine (all in epochs, applied per step)."""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class LRSchedule:
    """``factor(step)`` multiplies the peak lr. Stateless: a resumed run only needs the step counter."""

    name: str
    total_steps: float
    warmup_steps: int = 0
    warmup_start_factor: float = 1e-4
    milestone_steps: Sequence[int] = ()
    gamma: float = 0.1
    min_factor: float = 0.0

    @classmethod
    def from_config(cls, schedule: Mapping, *, total_steps: float, steps_per_epoch: int) -> "LRSchedule":
        """Epoch-valued settings (warm-up length, milestones) converted to steps. ``total_steps`` may be a
        float: a run that removes examples passes its length in pre-removal step units (train/removal.py)."""
        to_steps = lambda epochs: int(round(float(epochs) * steps_per_epoch))
        total_steps = total_steps if isinstance(total_steps, float) else int(total_steps)
        return cls(name=schedule["name"], total_steps=total_steps,
                   warmup_steps=min(to_steps(schedule["warmup_epochs"]), int(total_steps)),
                   warmup_start_factor=float(schedule["warmup_start_factor"]),
                   milestone_steps=tuple(to_steps(m) for m in schedule["milestones"]),
                   gamma=float(schedule["gamma"]), min_factor=float(schedule["min_lr_factor"]))

    def factor(self, step: float) -> float:
        """Factor for the optimizer step with 0-based index ``step`` (a float between steps is interpolated:
        the trainer's virtual step after a data removal)."""
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
        if self.name == "constant":
            return 1.0
        if self.name == "multistep":
            return self.gamma ** bisect.bisect_right(list(self.milestone_steps), step)
        if self.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"schedule.name must be one of 'constant', 'multistep', 'cosine'; got {self.name!r}")
