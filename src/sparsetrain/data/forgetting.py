"""Forgetting statistics (Toneva et al. 2019), as MEST uses them to drop easy examples mid-training.

A *presentation* of example ``i`` is one appearance in a training batch; the caller reports whether the
training-mode prediction was right (``logits.argmax(1) == y``, from logits it already has: no extra forward).
A *forgetting event* is: right at one presentation of ``i``, wrong at the next presentation of ``i``.
F(i) is the number of such events; an example never classified right is "never learned", F = +inf, and is
never removed (methods/mest.md §2.7, D10).

Works in any loop::

    tracker = ForgettingTracker(len(train_set))
    for x, y, idx in SeededLoader(train_set, 128, with_indices=True):
        logits = model(x)
        ...
        tracker.record(idx, logits.argmax(1) == y)
    loader.remove(tracker.removal(remove_n=12_000))
    tracker.reset()
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from ..errors import ConfigError, check_choice, check_int

MODES = ("lowest_n", "unforgettable")
_NEVER, _WRONG, _RIGHT = -1, 0, 1


class ForgettingTracker:
    """Per-example last correctness, forgetting-event count and learned flag, for ``num_examples`` examples.

    The state lives on the CPU (three small tensors); ``record`` moves its inputs there.
    """

    def __init__(self, num_examples: int):
        self.num_examples = check_int(num_examples, "num_examples", 1)
        self.reset()

    def reset(self) -> None:
        """Forget everything: every example back to never presented (MEST resets after a removal)."""
        n = self.num_examples
        self.last = torch.full((n,), _NEVER, dtype=torch.int8)      # -1 never presented, 0 wrong, 1 right
        self.forgets = torch.zeros(n, dtype=torch.int32)           # forgetting events
        self.learned = torch.zeros(n, dtype=torch.bool)            # right at least once

    def record(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        """One presentation of each ``indices[k]``, right iff ``correct[k]``.

        An index that appears several times in one batch counts as that many presentations, in batch order
        (so ``record([0, 0], [True, False])`` is one forgetting event). The loader never repeats an index
        within a batch except when a distributed rank wraps around; handling it costs nothing otherwise.
        """
        indices, correct = self._check_batch(indices, correct)
        if indices.numel() == 0:
            return
        unique, counts = torch.unique(indices, return_counts=True)
        if int(counts.max()) == 1:
            self._apply(indices, correct)
            return
        # Repeats: the k-th occurrence of every index is applied in round k, so each round has unique indices.
        order = torch.sort(indices, stable=True).indices
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(indices)
        rank[order] = torch.arange(indices.numel()) - torch.repeat_interleave(starts, counts)
        for k in range(int(counts.max())):
            pick = rank == k
            self._apply(indices[pick], correct[pick])

    def _apply(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        """One presentation each of distinct ``indices``."""
        forgot = (self.last[indices] == _RIGHT) & ~correct
        self.forgets[indices] += forgot.to(torch.int32)
        self.last[indices] = correct.to(torch.int8)
        self.learned[indices] |= correct

    def _check_batch(self, indices: Any, correct: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(indices, torch.Tensor) or indices.dtype.is_floating_point or indices.dtype.is_complex \
                or indices.dtype == torch.bool or indices.ndim != 1:
            raise ConfigError(f"indices must be a 1-D integer tensor of example indices, got "
                              f"{_describe(indices)}")
        if not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool or correct.ndim != 1:
            raise ConfigError(f"correct must be a 1-D bool tensor (logits.argmax(1) == y), got {_describe(correct)}")
        if correct.numel() != indices.numel():
            raise ConfigError(f"correct must hold one value per index: {indices.numel()} indices, "
                              f"{correct.numel()} values")
        indices = indices.detach().to("cpu", torch.int64)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_examples):
            raise ConfigError(f"indices must lie in [0, {self.num_examples}) (num_examples); got range "
                              f"[{int(indices.min())}, {int(indices.max())}]")
        return indices, correct.detach().to("cpu")

    def counts(self) -> torch.Tensor:
        """F per example as float64: forgetting events, +inf for never-learned examples (D10)."""
        out = self.forgets.to(torch.float64)
        out[~self.learned] = math.inf
        return out

    def removal(self, remove_n: int | None = None, keep_lowest_n: int = 0, mode: str = "lowest_n") -> torch.Tensor:
        """Sorted int64 indices of the examples to remove.

        ``lowest_n``: order examples by (F, index) ascending, skip the first ``keep_lowest_n``, take the next
        ``remove_n``. Never-learned examples (F = inf) are never removed, so *fewer than* ``remove_n`` come
        back when fewer than ``keep_lowest_n + remove_n`` examples were learned. ``unforgettable``: every
        learned example with F = 0 (``remove_n`` and ``keep_lowest_n`` must then be left unset).
        """
        check_choice(mode, "mode", MODES)
        if mode == "unforgettable":
            if remove_n is not None or keep_lowest_n != 0:
                raise ConfigError(f"mode='unforgettable' removes every learned example with F = 0; remove_n and "
                                  f"keep_lowest_n must be left unset, got remove_n={remove_n!r}, "
                                  f"keep_lowest_n={keep_lowest_n!r}")
            return torch.nonzero(self.learned & (self.forgets == 0)).flatten()
        if remove_n is None:
            raise ConfigError("remove_n must be an integer >= 0 in mode 'lowest_n', got None")
        remove_n = check_int(remove_n, "remove_n", 0)
        keep_lowest_n = check_int(keep_lowest_n, "keep_lowest_n", 0)
        f = self.counts()
        order = torch.sort(f, stable=True).indices  # stable: ties in index order
        chosen = order[keep_lowest_n:keep_lowest_n + remove_n]
        return torch.sort(chosen[torch.isfinite(f[chosen])]).values

    def stats(self) -> dict[str, int]:
        """Counts for logs: presented, learned, unforgettable (learned, F = 0), never_learned, forgetting_events."""
        presented = self.last != _NEVER
        return {"presented": int(presented.sum()), "learned": int(self.learned.sum()),
                "unforgettable": int((self.learned & (self.forgets == 0)).sum()),
                "never_learned": int((~self.learned).sum()), "forgetting_events": int(self.forgets.sum())}

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and an int (safe for ``torch.load(weights_only=True)``)."""
        return {"num_examples": self.num_examples, "last": self.last.clone(), "forgets": self.forgets.clone(),
                "learned": self.learned.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state for a different number of examples is refused."""
        missing = [k for k in ("num_examples", "last", "forgets", "learned") if k not in state]
        if missing:
            raise ConfigError(f"forgetting tracker state lacks {missing}; expected keys num_examples, last, "
                              f"forgets, learned, got {sorted(state)}")
        if state["num_examples"] != self.num_examples:
            raise ConfigError(f"forgetting tracker state is for num_examples={state['num_examples']!r}, this "
                              f"tracker has {self.num_examples}")
        tensors = {}
        for key, dtype in (("last", torch.int8), ("forgets", torch.int32), ("learned", torch.bool)):
            value = state[key]
            if not isinstance(value, torch.Tensor) or value.dtype != dtype or tuple(value.shape) != (self.num_examples,):
                raise ConfigError(f"forgetting tracker state {key} must be a {dtype} tensor of shape "
                                  f"({self.num_examples},), got {_describe(value)}")
            tensors[key] = value.detach().to("cpu").clone()
        self.last, self.forgets, self.learned = tensors["last"], tensors["forgets"], tensors["learned"]

    def __repr__(self) -> str:
        return f"ForgettingTracker(num_examples={self.num_examples}, {self.stats()})"


def forgetting_events(presentations: Iterable[bool]) -> float:
    """F of one example from its presentations in order (True = right): events, or inf if never right."""
    seq = [bool(v) for v in presentations]
    tracker = ForgettingTracker(1)
    tracker.record(torch.zeros(len(seq), dtype=torch.int64), torch.tensor(seq, dtype=torch.bool))
    return float(tracker.counts()[0])


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{value!r} ({type(value).__name__})"
