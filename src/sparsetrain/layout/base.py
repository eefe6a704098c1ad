"""The protocol every sparse weight storage follows, and how optimizer state follows a topology change."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels import coordinates_to_linear, gather_or_zero, linear_to_csr, order_check


class SlotRemap(ABC):
    """What ``Layout.replace`` changed, in the form an optimizer-state reset needs.

    ``carried`` holds the tensors passed to ``replace(..., carry=...)``, already carried across (what
    ``apply`` would return for each, computed in the same pass as the topology change).
    """

    carried: tuple[torch.Tensor, ...] = ()

    @abstractmethod
    def apply(self, state: torch.Tensor) -> torch.Tensor:
        """Carry a parameter-shaped state tensor across the change; grown and pruned entries become 0."""

    @property
    @abstractmethod
    def grown_slots(self) -> torch.Tensor:
        """Slots (in the new slot order) that hold the grown entries."""


@dataclass
class GatherRemap(SlotRemap):
    """Compressed storage: new slot i takes old slot ``source[i]``; ``source[i] == -1`` marks a grown slot."""

    source: torch.Tensor
    carried: tuple[torch.Tensor, ...] = ()

    def apply(self, state: torch.Tensor) -> torch.Tensor:
        return gather_or_zero(state, self.source)  # one pass; kept slots read in ascending order

    @property
    def grown_slots(self) -> torch.Tensor:
        return torch.nonzero(self.source < 0).flatten()


@dataclass
class ZeroRemap(SlotRemap):
    """Masked storage: parameter-shaped tensors keep their shape; ``changed`` flat positions are zeroed."""

    changed: torch.Tensor
    grown: torch.Tensor
    carried: tuple[torch.Tensor, ...] = ()

    def apply(self, state: torch.Tensor) -> torch.Tensor:
        state.view(-1)[self.changed] = 0
        return state

    @property
    def grown_slots(self) -> torch.Tensor:
        return self.grown


class Layout(nn.Module, ABC):
    """A sparse (n_out × n_in) weight. Slots are the active entries in storage order.

    Conv weights are seen as (C_out, C_in·k_h·k_w), the im2col view.
    """

    shape: tuple[int, int]
    values: torch.Tensor  # active values: the parameter itself (compressed; in storage order, see slot_values) or a copy (masked)

    @property
    @abstractmethod
    def nnz(self) -> int:
        """Number of active weights."""

    @property
    @abstractmethod
    def parameter(self) -> nn.Parameter:
        """The parameter the optimizer updates (active values, or the dense masked tensor)."""

    @abstractmethod
    def linear_indices(self) -> torch.Tensor:
        """Sorted int64 ``row · n_in + col`` of the active entries, in slot order."""

    def active_csr(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row pointers, columns) of the active entries in slot order; storages that keep a CSR return it."""
        return linear_to_csr(self.linear_indices(), *self.shape)

    def coordinates(self) -> torch.Tensor:
        """(nnz, 2) int64 (row, col) of the active entries in slot order."""
        lin = self.linear_indices()
        return torch.stack((lin // self.shape[1], lin % self.shape[1]), dim=1)

    @abstractmethod
    def replace(self, drop_slots: torch.Tensor, new_coordinates: torch.Tensor,
                carry: Sequence[torch.Tensor] = ()) -> SlotRemap:
        """Deactivate ``drop_slots`` and activate ``new_coordinates`` with value exactly 0.

        ``new_coordinates``: (k, 2) (row, col) pairs, or 1-D int64 linear positions ``row · n_in + col``
        (what the methods produce; strictly increasing ones skip a sort). ``carry``: parameter-shaped
        tensors (optimizer state) to bring across in the same pass; the result's ``carried`` holds them
        in order, each equal to ``apply(tensor)``.
        """

    def slot_values(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """The active values (detached; or a given per-slot tensor) in slot order, aligned with
        :meth:`linear_indices`. Storages that keep the parameter in another order override this."""
        return self.values.detach() if t is None else t

    @abstractmethod
    def to_dense(self) -> torch.Tensor:
        """The dense (n_out, n_in) weight: for tests and export only."""

    @property
    def density(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def extra_repr(self) -> str:
        return f"shape={self.shape}, nnz={self.nnz}, sparsity={self.sparsity:.4f}"


def validate_new_coordinates(new_coordinates: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Check (k, 2) coordinates or 1-D int64 linear positions against the layer shape and return sorted
    unique linear indices.

    One pass computes the indices and checks range and order; only unsorted input pays for a sort.
    """
    if new_coordinates.ndim == 1 and new_coordinates.dtype == torch.int64:
        lin = new_coordinates.contiguous()
        in_range, increasing = order_check(lin, shape[0] * shape[1])
    elif new_coordinates.ndim == 2 and new_coordinates.shape[1] == 2:
        coords = new_coordinates if new_coordinates.dtype in (torch.int32, torch.int64) else new_coordinates.long()
        lin, in_range, increasing = coordinates_to_linear(coords.contiguous(), shape[0], shape[1])
    else:
        raise ValueError("new_coordinates must be (k, 2) (row, col) pairs or 1-D int64 linear positions, got shape "
                         f"{tuple(new_coordinates.shape)} dtype {new_coordinates.dtype}")
    if not in_range:
        raise ValueError(f"new_coordinates out of range for a weight of shape {shape}")
    if not increasing:
        lin, _ = torch.sort(lin)
        if (lin[1:] == lin[:-1]).any():
            raise ValueError("new_coordinates contains duplicate positions")
    return lin


def validate_drop_slots(drop_slots: torch.Tensor, nnz: int) -> torch.Tensor:
    """Check slot ids are unique and in [0, nnz); return them sorted ascending as int64."""
    drop = drop_slots.flatten()
    if drop.dtype not in (torch.int32, torch.int64):
        drop = drop.long()
    in_range, increasing = order_check(drop, nnz)
    if not in_range:
        raise ValueError(f"drop_slots must be in [0, {nnz}), got min {int(drop.min())} max {int(drop.max())}")
    drop = drop.long()
    if not increasing:
        drop, _ = torch.sort(drop)
        if (drop[1:] == drop[:-1]).any():
            raise ValueError("drop_slots contains duplicates")
    return drop
