"""Masked-dense storage: a dense parameter and a boolean mask of the same shape.

For methods that need dense quantities (Spartan, SNFS's dense momentum) and for small or conv layers
where dense kernels are faster. Slots are the active entries in row-major order of the (n_out, fan_in)
view. Inactive entries of the parameter are kept at exactly 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import math

import torch
from torch import nn

from .base import Layout, ZeroRemap, validate_drop_slots, validate_new_coordinates


class MaskedLayout(Layout):
    """Dense weight (any shape whose first dim is n_out) plus a boolean mask of the same shape."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        if mask.shape != weight.shape:
            raise ValueError(f"mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
        self.shape = (int(weight.shape[0]), int(math.prod(weight.shape[1:])))
        self.weight = nn.Parameter(weight.detach().clone())
        self.register_buffer("mask", mask.to(torch.bool).clone())
        self.apply_mask_()

    @classmethod
    def from_linear_indices(cls, weight_shape: tuple[int, ...], linear_indices: torch.Tensor,
                            dtype: torch.dtype | None = None) -> "MaskedLayout":
        """A zero weight of ``weight_shape`` with the given active positions (flat, row-major)."""
        mask = torch.zeros(math.prod(weight_shape), dtype=torch.bool, device=linear_indices.device)
        mask[linear_indices.long()] = True
        weight = torch.zeros(weight_shape, dtype=dtype or torch.get_default_dtype(), device=linear_indices.device)
        return cls(weight, mask.view(weight_shape))

    @property
    def nnz(self) -> int:
        return int(self.mask.sum())

    @property
    def parameter(self) -> nn.Parameter:
        return self.weight

    @property
    def values(self) -> torch.Tensor:
        return self.weight.detach().reshape(-1)[self.mask.reshape(-1)]

    def linear_indices(self) -> torch.Tensor:
        return torch.nonzero(self.mask.reshape(-1)).flatten()

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: parameter × mask (the gradient of inactive entries is 0)."""
        return self.weight * self.mask

    @torch.no_grad()
    def set_slot_values(self, slot_ordered: torch.Tensor) -> None:
        """Write the values given in slot order (row-major active positions) into the parameter."""
        self.weight.view(-1)[self.linear_indices()] = slot_ordered.to(self.weight.dtype)

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the parameter outside the mask (after an optimizer step that moved inactive entries)."""
        self.weight.mul_(self.mask)

    @torch.no_grad()
    def replace(self, drop_slots: torch.Tensor, new_coordinates: torch.Tensor,
                carry: Sequence[torch.Tensor] = ()) -> ZeroRemap:
        active = self.linear_indices()
        drop = active[validate_drop_slots(drop_slots, active.numel())]
        new = validate_new_coordinates(new_coordinates.to(self.mask.device), self.shape)
        flat_mask = self.mask.view(-1)
        flat_mask[drop] = False
        if bool(flat_mask[new].any()):
            flat_mask[drop] = True
            raise ValueError("new_coordinates includes positions that stay active")
        flat_mask[new] = True
        changed = torch.cat((drop, new))
        self.weight.view(-1)[changed] = 0
        if self.weight.grad is not None:
            self.weight.grad.view(-1)[changed] = 0
        grown_slots = torch.searchsorted(self.linear_indices(), new)
        remap = ZeroRemap(changed=changed, grown=grown_slots)
        remap.carried = tuple(remap.apply(t) for t in carry)
        return remap

    def to_dense(self) -> torch.Tensor:
        return self.effective_weight().detach().reshape(self.shape)
