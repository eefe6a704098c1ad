"""Diagonal storage (methods/dynadiag.md §2.1, §2.5): K wrap-around diagonals of an M × N weight.

``offsets`` (K,) are the selected diagonals, ascending. ``storage="compact"`` keeps only their values,
(K, D); ``"full"`` keeps all P = max(M, N) diagonals, (P, D) (memory equal to dense; DynaDiag's
``reference`` mode needs it), of which the selected rows are used. Slots are the active entries in
ascending linear-index order, like every other layout; topology changes replace whole diagonals
(:meth:`select`), never single entries.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, check_choice
from ..kernels.diagonal import diagonal_coordinates, diagonal_count
from .base import Layout, SlotRemap

STORAGES = ("compact", "full")


class DiagonalRemap(SlotRemap):
    """Rows of a compact (K, D) value tensor after a selection change: new row i takes old row ``source[i]``,
    or zeros where ``source[i] == -1`` (an incoming diagonal). Full storage keeps every row in place."""

    def __init__(self, source: torch.Tensor | None, carried: tuple[torch.Tensor, ...] = ()):
        self.source, self.carried = source, carried

    def apply(self, state: torch.Tensor) -> torch.Tensor:
        if self.source is None:
            return state
        out = torch.zeros_like(state)
        kept = self.source >= 0
        out[kept] = state[self.source[kept]]
        return out

    @property
    def grown_slots(self) -> torch.Tensor:
        """Rows (not entries) that hold incoming diagonals."""
        return torch.empty(0, dtype=torch.int64) if self.source is None else torch.nonzero(self.source < 0).flatten()


class DiagonalLayout(Layout):
    """K selected diagonals of an (M, N) weight; ``values`` is (K, D) (compact) or (P, D) (full)."""

    def __init__(self, shape: tuple[int, int], offsets: torch.Tensor, values: torch.Tensor, storage: str = "compact"):
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        self.storage = check_choice(storage, "storage", STORAGES)
        self.n_diagonals, self.length = diagonal_count(*self.shape)
        offsets = offsets.long()
        if offsets.ndim != 1 or offsets.numel() == 0 or bool((offsets[1:] <= offsets[:-1]).any()) \
                or int(offsets.min()) < 0 or int(offsets.max()) >= self.n_diagonals:
            raise ValueError(f"offsets must be ascending, unique and in [0, P={self.n_diagonals}), got {offsets.tolist()}")
        rows = offsets.numel() if self.storage == "compact" else self.n_diagonals
        if values.shape != (rows, self.length):
            raise ValueError(f"values must have shape ({rows}, {self.length}) for storage={self.storage!r}, got "
                             f"{tuple(values.shape)}")
        self.register_buffer("offsets", offsets.clone())
        self.values = nn.Parameter(values.detach().clone())

    @property
    def nnz(self) -> int:
        return self.offsets.numel() * self.length

    @property
    def diagonals(self) -> int:
        """K, the number of selected diagonals."""
        return self.offsets.numel()

    @property
    def parameter(self) -> nn.Parameter:
        return self.values

    def selected_values(self) -> torch.Tensor:
        """The (K, D) values of the selected diagonals (differentiable)."""
        return self.values if self.storage == "compact" else self.values.index_select(0, self.offsets)

    def _entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted linear indices, the position of each in the flattened (K, D) selected values)."""
        rows, cols = diagonal_coordinates(self.offsets, *self.shape)
        return torch.sort((rows * self.shape[1] + cols).reshape(-1))

    def linear_indices(self) -> torch.Tensor:
        return self._entries()[0]

    def slot_values(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """Values (or a (K, D) per-entry tensor of the selected diagonals) in slot (linear-index) order."""
        t = self.selected_values().detach() if t is None else t
        return t.reshape(-1)[self._entries()[1]]

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        rows, cols = diagonal_coordinates(self.offsets, *self.shape)
        dense[rows.reshape(-1), cols.reshape(-1)] = self.selected_values().detach().reshape(-1)
        return dense

    def replace(self, drop_slots: torch.Tensor, new_coordinates: torch.Tensor,
                carry: Sequence[torch.Tensor] = ()) -> SlotRemap:
        raise ConfigError("a diagonal layout changes whole diagonals, not entries: use select(offsets); only "
                          "method 'dynadiag' changes diagonal layers")

    @torch.no_grad()
    def select(self, offsets: torch.Tensor, carry: Sequence[torch.Tensor] = ()) -> DiagonalRemap:
        """Make ``offsets`` (ascending, same K) the selected diagonals. Compact storage drops the outgoing
        diagonals' values and starts incoming ones at exactly 0; ``carry`` (value-shaped optimizer state)
        moves the same way. Full storage keeps every row, so a re-selected diagonal resumes its values."""
        offsets = offsets.to(self.offsets.device).long()
        if offsets.shape != self.offsets.shape:
            raise ValueError(f"select needs K={self.diagonals} offsets, got {tuple(offsets.shape)}")
        if self.storage == "full":
            self.offsets.copy_(offsets)
            return DiagonalRemap(None, tuple(carry))
        position = torch.searchsorted(self.offsets, offsets).clamp_(max=self.diagonals - 1)
        source = torch.where(self.offsets[position] == offsets, position, torch.full_like(position, -1))
        remap = DiagonalRemap(source)
        remap.carried = tuple(remap.apply(t) for t in carry)
        self.values.copy_(remap.apply(self.values.data))
        self.offsets.copy_(offsets)
        return remap

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, diagonals={self.diagonals}/{self.n_diagonals}, storage={self.storage!r}"
