"""Compressed storage: active values in a CSR (row pointers and columns), plus a transposed CSR.

Persistent state (what a checkpoint holds): ``values`` (the parameter), ``crow`` (n_out + 1 row pointers)
and ``col`` (one column per active weight, ascending within a row): 4 bytes of index per active weight
with int32 indices, and ``value_block`` (how the values are stored, below). ``row`` (each entry's row) is
derived on demand. Derived on every topology change: the transposed CSR, built only when a backend asks for
it (``transposed()``): ``ccol`` (column pointers), ``row_t`` (row of each entry in column-major order) and
``perm_t`` (its value's position). Nothing here is ever of size n_out × n_in.

Value storage. Slots — what ``drop_slots``, ``linear_indices()``, ``coordinates()`` and ``slot_values()``
count — are the CSR entries in row-major order. The parameter holds them in that order, unless
``value_block`` = b > 0 (chosen for large CPU layers, ``cpp_ext.value_block_rows``): then the values of
each block of b rows keep the block's range of the parameter but are ordered inside it by (column, row),
the order in which the backward's transposed walk reaches them, and ``slots()`` gives each CSR entry's
position in the parameter (4 bytes per active weight, derived with the transposed CSR). Optimizer state
lives in the parameter's order; checkpoints hold the values in slot order.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..kernels import (cpp_ext, csr_rows, gather_or_zero, implementation, linear_index, merge_entries, rows_to_crow,
                       storage_walk, to_storage, transpose_after_merge, transpose_blocked, transpose_csr)
from .base import GatherRemap, Layout, validate_drop_slots, validate_new_coordinates

_INT32_LIMIT = 2**31 - 1


def index_dtype_for(shape: tuple[int, int], nnz: int) -> torch.dtype:
    """int32 indices whenever every index and pointer fits (half the memory at equal speed)."""
    return torch.int32 if max(shape[0] + 1, shape[1] + 1, nnz) <= _INT32_LIMIT else torch.int64


def random_linear_indices(shape: tuple[int, int], nnz: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """Exactly ``nnz`` distinct positions, uniform at random, as sorted int64 linear indices.

    Rejection sampling with replacement then de-duplication, so the work is O(nnz log nnz) and no
    dense-sized buffer exists unless the layer is at least half dense (then a permutation is cheaper).
    """
    total = shape[0] * shape[1]
    if not 0 <= nnz <= total:
        raise ValueError(f"nnz must be in [0, {total}] for a weight of shape {shape}, got {nnz}")
    if nnz * 2 >= total:
        picked = torch.randperm(total, generator=generator, device=device)[:nnz]
        return torch.sort(picked).values
    chosen = torch.empty(0, dtype=torch.int64, device=device)
    while chosen.numel() < nnz:
        missing = nnz - chosen.numel()
        draw = torch.randint(0, total, (int(missing * 1.1) + 16,), generator=generator, device=device)
        chosen = torch.unique(torch.cat((chosen, draw)))
    if chosen.numel() > nnz:  # drop a uniformly random surplus, keeping the choice uniform
        keep = torch.randperm(chosen.numel(), generator=generator, device=device)[:nnz]
        chosen = torch.sort(chosen[keep]).values
    return chosen


def _swap_data(param: nn.Parameter, new: torch.Tensor) -> None:
    """Give ``param`` new data, possibly of another size, keeping the Parameter object.

    autograd caches a leaf's gradient accumulator with the old shape while any old graph (e.g. last
    step's ``loss``) is alive, and ``.data =`` resets it only on a dtype/device change; a brief swap to
    an empty tensor of another dtype forces that reset, so the next backward accepts the new size.
    """
    if param.shape != new.shape:
        param.data = torch.empty(0, dtype=torch.float32 if new.dtype == torch.float64 else torch.float64,
                                 device=new.device)
    param.data = new


class CompressedLayout(Layout):
    """Active values + sorted (row, col) coordinates; never materialises the dense weight."""

    def __init__(self, shape: tuple[int, int], linear_indices: torch.Tensor, values: torch.Tensor | None = None,
                 *, dtype: torch.dtype | None = None, value_block: int | None = None):
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        lin = linear_indices.long().flatten()
        if lin.numel() > 1 and not bool((lin[1:] > lin[:-1]).all()):
            raise ValueError("linear_indices must be strictly increasing (sorted, no duplicates)")
        if lin.numel() and (lin[0] < 0 or lin[-1] >= self.shape[0] * self.shape[1]):
            raise ValueError(f"linear_indices out of range for shape {self.shape}")
        if values is None:
            values = torch.zeros(lin.numel(), dtype=dtype or torch.get_default_dtype(), device=lin.device)
        if values.shape != lin.shape:
            raise ValueError(f"values must have shape {tuple(lin.shape)}, got {tuple(values.shape)}")
        self.values = nn.Parameter(values.detach().clone())
        idx = index_dtype_for(self.shape, lin.numel())
        self.register_buffer("crow", rows_to_crow((lin // self.shape[1]).to(idx), self.shape[0]))
        self.register_buffer("col", (lin % self.shape[1]).to(idx))
        if value_block is None:
            on_cpu = self.values.device.type == "cpu"
            value_block = cpp_ext.value_block_rows(*self.shape, self.nnz, self.values.dtype) if on_cpu else 0
        if isinstance(value_block, bool) or not isinstance(value_block, int) or value_block < 0:
            raise ValueError(f"value_block must be an int >= 0 (rows per value block, 0: CSR order), got {value_block!r}")
        self.register_buffer("value_block", torch.tensor(value_block, dtype=torch.int64))
        self._block_rows = value_block
        self._transposed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._slots: torch.Tensor | None = None
        self._walk: torch.Tensor | None = None
        if value_block:
            self.values.data = self.to_storage(self.values.data)

    @classmethod
    def random(cls, shape: tuple[int, int], nnz: int, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> "CompressedLayout":
        """Exactly ``nnz`` active positions chosen uniformly at random, values 0."""
        return cls(shape, random_linear_indices(shape, nnz, generator, device), dtype=dtype)

    # --- protocol ---------------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def parameter(self) -> nn.Parameter:
        return self.values

    @property
    def row(self) -> torch.Tensor:
        """The row of each active entry (slot order), expanded from the row pointers on each call."""
        return csr_rows(self.crow)

    def linear_indices(self) -> torch.Tensor:
        return linear_index(self.row, self.col, self.shape[1])

    def coordinates(self) -> torch.Tensor:
        return torch.stack((self.row.long(), self.col.long()), dim=1)

    # --- value storage -----------------------------------------------------------------------------
    @property
    def blocked(self) -> bool:
        """Whether the values are in row-block storage order (see the module docstring)."""
        return self._block_rows > 0

    def slots(self) -> torch.Tensor | None:
        """Position in the parameter of each CSR entry under row-block storage (None: CSR order), built with
        the transposed CSR after a topology change."""
        if not self.blocked:
            return None
        self.transposed()
        return self._slots

    def storage_walk(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, int] | None:
        """``(walk, block_rows)`` for forward and backward in storage order — ``walk`` the (nnz, 2) (column,
        row) of each storage position — where our CPU kernels serve a layer computing in ``dtype`` (default:
        the values'; under autocast, bfloat16) and a block reuses its gathered rows enough
        (``cpp_ext.storage_walk_pays``); None otherwise. Built with the transposed CSR after a topology change
        (8 bytes per active weight)."""
        if not self._walks(dtype or self.values.dtype):
            return None
        if self._walk is None:
            self.transposed()  # builds the walk with the storage order where the values' dtype walks
        if self._walk is None:  # the transposed CSR was built without it (another setting or dtype then)
            self._walk = storage_walk(self.crow, self.col, self.slots(), self._block_rows)
        return self._walk, self._block_rows

    def _walks(self, dtype: torch.dtype) -> bool:
        """Whether a layer computing in ``dtype`` walks its storage order (storage_walk)."""
        if not self.blocked or self.values.device.type != "cpu":
            return False
        return implementation(self.values.device, dtype) is cpp_ext and cpp_ext.storage_walk_pays(
            self.shape[0], self.shape[1], self.nnz, self._block_rows, dtype)

    def _forget_derived(self) -> None:
        """Drop the indices derived from the CSR (after a topology change or a load)."""
        self._transposed = self._slots = self._walk = None

    @property
    def block_rows(self) -> int:
        """Rows per value block (0: CSR order)."""
        return self._block_rows

    def slot_values(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """A parameter-shaped tensor (default: the values, detached) in slot order: itself under CSR storage,
        else a gathered copy (differentiable)."""
        t = self.values.detach() if t is None else t
        slots = self.slots()
        if slots is None:
            return t
        return t.index_select(0, slots) if t.requires_grad else gather_or_zero(t, slots)  # ours: one fast pass

    def to_storage(self, slot_ordered: torch.Tensor) -> torch.Tensor:
        """A slot-ordered per-entry tensor in the parameter's order (itself under CSR storage)."""
        return to_storage(slot_ordered, self.slots())

    @torch.no_grad()
    def set_slot_values(self, slot_ordered: torch.Tensor) -> None:
        """Write the values given in slot order into the parameter."""
        self.values.copy_(self.to_storage(slot_ordered.to(self.values.dtype)))

    def replace(self, drop_slots: torch.Tensor, new_coordinates: torch.Tensor,
                carry: Sequence[torch.Tensor] = ()) -> GatherRemap:
        """One merge of the kept (row, col) entries with the sorted new ones (O(nnz), in the index dtype)
        that also carries the values and ``carry`` (parameter-shaped, in the parameter's order); nothing is
        changed when the input is rejected. Under row-block storage the merge runs on the indices only; the new
        storage order is built at once, and every tensor is carried in the one pass that maps old to new
        storage positions."""
        drop = validate_drop_slots(drop_slots.to(self.col.device), self.nnz)
        new_lin = validate_new_coordinates(new_coordinates.to(self.col.device), self.shape)
        crow, col = self.crow, self.col
        idx = index_dtype_for(self.shape, self.nnz - drop.numel() + new_lin.numel())
        if idx != col.dtype:  # the merged entry count no longer fits int32
            crow, col = crow.to(idx), col.to(idx)
        for t in carry:
            if t.shape != self.values.shape:
                raise ValueError(f"carry tensors must have the shape of the values {tuple(self.values.shape)}, "
                                 f"got {tuple(t.shape)}")
        old_slots = self.slots()
        payloads = [self.values.data, *carry] if old_slots is None else []  # row blocks: carried after the merge
        crow, col, source, collisions, carried = merge_entries(crow, col, drop, new_lin, self.shape[1], payloads)
        if collisions:
            raise ValueError(f"new_coordinates includes positions that stay active ({collisions} of them)")
        self.crow, self.col = crow, col
        self._forget_derived()  # rebuilt when next asked for
        if old_slots is not None:
            # the new storage order with its transposed CSR; new storage position q takes old storage position
            # old_slots[source[CSR slot of q]] (-1: grown), and every tensor is carried through that remap
            walks = self._walks(self.values.dtype)  # the new storage walk too, written with the storage order
            perm_t, ccol, row_t, self._slots, source, carried, *walk = transpose_after_merge(
                crow, col, self.shape[1], self._block_rows, source, old_slots, [self.values.data, *carry], walk=walks)
            self._transposed = (ccol, row_t, perm_t)
            self._walk = walk[0] if walk else None
        remap = GatherRemap(source, carried=tuple(carried[1:]))
        with torch.no_grad():
            _swap_data(self.values, carried[0])
        self.values.grad = None
        return remap

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        dense[self.row.long(), self.col.long()] = self.slot_values()
        return dense

    # --- derived indices ----------------------------------------------------------------------------
    def transposed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ccol, row_t, perm_t): the transposed CSR, built on first use after a topology change.

        Every backend computes the input gradient on it; a layer whose input needs no gradient (the first
        layer) never builds it and holds 8 fewer bytes of indices per active weight.
        """
        cached = self._transposed
        if cached is None or cached[0].device != self.col.device:
            # one O(nnz) counting sort on CPU gives the column order, the column pointers and the rows in it
            if self.blocked:  # perm_t in storage positions; slots: the storage position of each CSR entry
                perm_t, ccol, row_t, self._slots, *walk = transpose_blocked(
                    self.crow, self.col, self.shape[1], self._block_rows, walk=self._walks(self.values.dtype))
                self._walk = walk[0] if walk else None
            else:
                perm_t, ccol, row_t = transpose_csr(self.crow, self.col, self.shape[1])
            cached = self._transposed = (ccol, row_t, perm_t)
        return cached

    @property
    def ccol(self) -> torch.Tensor:
        return self.transposed()[0]

    @property
    def row_t(self) -> torch.Tensor:
        return self.transposed()[1]

    @property
    def perm_t(self) -> torch.Tensor:
        return self.transposed()[2]

    def active_csr(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.crow, self.col

    def fan_in(self) -> torch.Tensor:
        """Active inputs per output unit (n_out,)."""
        return (self.crow[1:] - self.crow[:-1]).long()

    def index_bytes(self) -> int:
        """Bytes of the index tensors held now (persistent, row pointers, and the transposed CSR with the
        row-block slots and the storage walk if built)."""
        held = (self.col, self.crow, *(self._transposed or ()),
                *(t for t in (self._slots, self._walk) if t is not None))
        return sum(b.numel() * b.element_size() for b in held)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.blocked:  # checkpoints hold the values in slot order, whatever the storage
            destination[prefix + "values"] = self.slot_values(self.values if keep_vars else self.values.detach())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The number of active weights may differ from ours (global-scope methods move weights between
        # layers): take the incoming sizes before the copy, then check the CSR. A checkpoint of the earlier
        # (row, col) storage is converted; one from before row-block storage has its values in CSR order.
        if prefix + "row" in state_dict and prefix + "crow" not in state_dict:
            state_dict[prefix + "crow"] = rows_to_crow(state_dict.pop(prefix + "row").contiguous(), self.shape[0])
        if prefix + "value_block" not in state_dict and prefix + "values" in state_dict:
            state_dict[prefix + "value_block"] = torch.tensor(0, dtype=torch.int64)
        crow, col, values = (state_dict.get(prefix + k) for k in ("crow", "col", "values"))
        if crow is not None and col is not None and values is not None:
            if not (col.shape == values.shape and col.ndim == 1 and crow.ndim == 1
                    and crow.numel() == self.shape[0] + 1):
                error_msgs.append(f"{prefix}: col and values must be 1-D of equal length and crow must have "
                                  f"n_out + 1 = {self.shape[0] + 1} elements")
                return
            _swap_data(self.values, self.values.data.new_empty(values.shape))
            self.crow = self.crow.new_empty(crow.shape, dtype=crow.dtype)
            self.col = self.col.new_empty(col.shape, dtype=col.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._forget_derived()
        self._block_rows = int(self.value_block)
        if self._block_rows < 0:
            error_msgs.append(f"{prefix}: value_block must be >= 0, got {self._block_rows}")
            return
        steps = self.crow.diff()
        if int(self.crow[0]) != 0 or int(self.crow[-1]) != self.col.numel() or bool((steps < 0).any()):
            error_msgs.append(f"{prefix}: crow must be non-decreasing from 0 to the number of entries")
            return
        if self.col.numel():
            lin = self.linear_indices()
            if int(self.col.min()) < 0 or int(self.col.max()) >= self.shape[1] or bool((lin[1:] <= lin[:-1]).any()):
                error_msgs.append(f"{prefix}: columns must lie in [0, {self.shape[1]}) and ascend within each row")
                return
        if self.blocked:  # the checkpoint's values are in slot order
            with torch.no_grad():
                self.values.data = self.to_storage(self.values.data)
