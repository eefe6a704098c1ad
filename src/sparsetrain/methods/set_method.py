"""SET (Mocanu et al. 2018): prune the smallest weights, regrow uniformly at random (gse.md §2.6)."""
from __future__ import annotations

import torch

from ..errors import check_choice
from .base import DYNAMIC_DEFAULTS, Layer, PruneThenGrow
from .candidates import uniform_inactive
from .select import bottom_k, count_of, top_k
from .registry import register


@register
class SET(PruneThenGrow):
    """Prune k = rule(ζ·nnz) smallest |θ| (``alpha`` is ζ); grow k inactive positions uniformly at random.

    ``set_prune="sign_split"`` follows the SET code: drop the weights closest to zero on each side, the
    negative ones closest to zero (largest negatives) and the non-negative ones closest to zero, k split
    in proportion to the two counts: k_neg = rule(k·n_neg/nnz), k_nonneg = k − k_neg, so the total
    stays k (the SET code takes ζ of each side, which can differ from k by one).
    """

    name = "set"
    parameters = {**DYNAMIC_DEFAULTS, "alpha": 0.3, "alpha_schedule": "constant", "delta_t": "epoch",
                  "t_end": 1.0, "set_prune": "magnitude"}

    def configure(self) -> None:
        self.prune_rule = check_choice(self.hp["set_prune"], "set_prune", ("magnitude", "sign_split"))

    def prune_slots(self, layer: Layer, k: int) -> torch.Tensor:
        if self.prune_rule == "magnitude":
            return layer.smallest(k)
        values = layer.layout.slot_values()
        negative = torch.nonzero(values < 0).flatten()
        nonneg = torch.nonzero(values >= 0).flatten()
        k_neg = min(negative.numel(), count_of(k / max(1, values.numel()), negative.numel(), self.k_rounding))
        k_pos = min(nonneg.numel(), k - k_neg)
        drop_neg = negative[top_k(values[negative], k_neg)]       # largest negatives: closest to 0
        drop_pos = nonneg[bottom_k(values[nonneg], k_pos)]        # smallest non-negatives
        return torch.sort(torch.cat((drop_neg, drop_pos))).values

    def grow_positions(self, layer: Layer, k: int, step: int) -> torch.Tensor:
        return uniform_inactive(layer.active(), layer.total, k, self.generator(step, layer))
