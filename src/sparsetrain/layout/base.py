"""The protocol every sparse weight storage follows, and how optimizer state follows a topology change."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


class SlotRemap(ABC):
    """What ``Layout.replace`` changed, in the form an optimizer-state reset needs."""

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

    def apply(self, state: torch.Tensor) -> torch.Tensor:
        out = state[self.source.clamp(min=0)]
        out[self.source < 0] = 0
        return out

    @property
    def grown_slots(self) -> torch.Tensor:
        return torch.nonzero(self.source < 0).flatten()


@dataclass
class ZeroRemap(SlotRemap):
    """Masked storage: parameter-shaped tensors keep their shape; ``changed`` flat positions are zeroed."""

    changed: torch.Tensor
    grown: torch.Tensor

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
    values: torch.Tensor  # active values in slot order (the parameter itself, or a copy for masked storage)

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

    def coordinates(self) -> torch.Tensor:
        """(nnz, 2) int64 (row, col) of the active entries in slot order."""
        lin = self.linear_indices()
        return torch.stack((lin // self.shape[1], lin % self.shape[1]), dim=1)

    @abstractmethod
    def replace(self, drop_slots: torch.Tensor, new_coordinates: torch.Tensor) -> SlotRemap:
        """Deactivate ``drop_slots`` and activate ``new_coordinates`` ((k, 2) row/col) with value exactly 0."""

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
    """Check a (k, 2) coordinate tensor against the layer shape and return sorted unique linear indices."""
    if new_coordinates.ndim != 2 or new_coordinates.shape[1] != 2:
        raise ValueError(f"new_coordinates must have shape (k, 2), got {tuple(new_coordinates.shape)}")
    coords = new_coordinates.long()
    if coords.numel() and (coords.min() < 0 or (coords[:, 0] >= shape[0]).any() or (coords[:, 1] >= shape[1]).any()):
        raise ValueError(f"new_coordinates out of range for a weight of shape {shape}")
    lin = coords[:, 0] * shape[1] + coords[:, 1]
    if lin.numel() > 1 and not bool((lin[1:] > lin[:-1]).all()):  # already sorted and unique: no sort needed
        lin, _ = torch.sort(lin)
    if lin.numel() > 1 and (lin[1:] == lin[:-1]).any():
        raise ValueError("new_coordinates contains duplicate positions")
    return lin


def validate_drop_slots(drop_slots: torch.Tensor, nnz: int) -> torch.Tensor:
    """Check slot ids are unique and in [0, nnz); return them as int64."""
    drop = drop_slots.long().flatten()
    if drop.numel() and (drop.min() < 0 or drop.max() >= nnz):
        raise ValueError(f"drop_slots must be in [0, {nnz}), got min {int(drop.min())} max {int(drop.max())}")
    if drop.numel() > 1 and not bool((drop[1:] > drop[:-1]).all()):  # sorted and unique needs no sort
        s, _ = torch.sort(drop)
        if (s[1:] == s[:-1]).any():
            raise ValueError("drop_slots contains duplicates")
    return drop
