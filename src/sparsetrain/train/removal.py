"""Step planning for a run that removes examples by forgetting statistics (config section ``forgetting``).

After the removal, epochs are shorter (``kept_steps_per_epoch`` batches) but the per-epoch LR schedule is
unchanged (MEST): the schedule sees a *virtual step* in pre-removal units, so one kept epoch advances it by
one full epoch. Everything here is a pure function of the config and the data set size, so a resumed run
plans exactly the same steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ..errors import ConfigError


def removal_epoch(config: Mapping) -> int:
    """e_r = round(forgetting.remove_at · train.epochs); a ConfigError unless 1 <= e_r < train.epochs."""
    epochs, remove_at = config["train"]["epochs"], config["forgetting"]["remove_at"]
    e_r = round(remove_at * epochs)
    if not 1 <= e_r < epochs:
        raise ConfigError(f"forgetting.remove_at={remove_at!r} with train.epochs={epochs!r} puts the removal at "
                          f"epoch round({remove_at!r} * {epochs!r}) = {e_r}; it must be in [1, train.epochs) so "
                          f"that statistics come from at least one epoch and some training follows")
    return e_r


@dataclass(frozen=True)
class RemovalPlan:
    """Removal at the start of epoch ``epoch``; ``steps_per_epoch`` before it, ``kept_steps_per_epoch`` after."""

    epoch: int
    steps_per_epoch: int
    kept_steps_per_epoch: int

    @property
    def step(self) -> int:
        """Steps trained before the removal (the removal follows step ``epoch · steps_per_epoch``)."""
        return self.epoch * self.steps_per_epoch

    def total_steps(self, epochs: float) -> int:
        """e_r · spe + ceil((epochs - e_r) · spe'): the run's length before any max_steps cap."""
        return self.step + int(math.ceil((epochs - self.epoch) * self.kept_steps_per_epoch))

    def virtual(self, step: int) -> int | float:
        """``step`` in pre-removal units: itself up to the removal, then e_r·spe + (step - e_r·spe)·spe/spe'."""
        if step <= self.step:
            return step
        # Integer product first, so whole kept epochs map to exact whole pre-removal epochs.
        return self.step + (step - self.step) * self.steps_per_epoch / self.kept_steps_per_epoch

    def steps_without_removal(self, step: int) -> int:
        """Steps the same epochs take without removal: ceil(virtual(step))."""
        if step <= self.step:
            return step
        return self.step + -(-(step - self.step) * self.steps_per_epoch // self.kept_steps_per_epoch)
