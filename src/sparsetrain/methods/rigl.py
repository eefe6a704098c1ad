"""RigL (Evci et al. 2020): prune the smallest weights, grow where the batch gradient is largest (gse.md §2.6)."""
from __future__ import annotations

import torch

from ..errors import check_bool, check_int, check_number
from .base import DYNAMIC_DEFAULTS, GRADIENT_DEFAULTS, Layer, Plan, PruneThenGrow
from .registry import register
from .scores import block_rows_for, blocked_gradient_top_k


@register
class RigL(PruneThenGrow):
    """Grow the k inactive positions with the largest |∇θ| of the current batch.

    The dense gradient is formed inside ``step()`` one block of output units at a time from the
    layer's observed (x_fm, gy_fm); a running top-k merges the blocks, so peak extra memory is
    O(block + k) with a block of at most ``block_mib`` MiB. ``allow_regrow_pruned=True`` is the RigL
    code's behaviour: growth may pick a position pruned in the same update, which then simply stays
    (old value and optimizer state kept), so fewer entries actually change.
    """

    name = "rigl"
    uses_gradient = True
    parameters = {**DYNAMIC_DEFAULTS, **GRADIENT_DEFAULTS, "alpha": 0.3, "delta_t": 100, "t_end": 0.75,
                  "block_mib": 64.0, "allow_regrow_pruned": False}

    def configure(self) -> None:
        self.block_mib = check_number(self.hp["block_mib"], "block_mib", 0.0, float("inf"), low_open=True)
        self.allow_regrow = check_bool(self.hp["allow_regrow_pruned"], "allow_regrow_pruned")
        check_int(self.hp["score_batches"], "score_batches", 0)

    def block_rows(self, layer: Layer) -> int:
        return block_rows_for(layer.shape[1], layer.layout.parameter.element_size(), self.block_mib)

    def grow_positions(self, layer: Layer, k: int, step: int) -> torch.Tensor:
        return blocked_gradient_top_k(layer.parts(), layer.active(), layer.shape, k, self.block_rows(layer))

    def plan_layer(self, layer: Layer, k: int, step: int) -> Plan | None:
        if not self.allow_regrow:
            return super().plan_layer(layer, k, step)
        k = min(k, layer.total - layer.nnz)
        if k == 0:
            return None
        active = layer.active()
        drop = self.prune_slots(layer, k)
        keep = torch.ones(active.numel(), dtype=torch.bool, device=active.device)
        keep[drop] = False
        still_active = active[keep]  # growth may choose among everything inactive after the prune
        grow = blocked_gradient_top_k(layer.parts(), still_active, layer.shape, k, self.block_rows(layer))
        regrown = torch.searchsorted(active, grow).clamp_(max=active.numel() - 1)
        is_regrown = active[regrown] == grow
        undo = torch.zeros(active.numel(), dtype=torch.bool, device=active.device)
        undo[regrown[is_regrown]] = True
        return Plan(drop[~undo[drop]], grow[~is_regrown])
