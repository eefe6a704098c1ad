"""GSE, guided stochastic exploration (Heddes et al. 2024): score only a random sample of inactive
connections, grow the best, then prune the smallest (gse.md §2.4, §2.5).

Candidates and their scores come from :func:`.candidates.scored_candidates` (on CPU one pass per row:
draw, drop duplicates and actives, SDDMM over the current batch's observed (x_fm, gy_fm)); no dense mask
and no dense gradient is ever formed (D7). For a conv the rows are (sample, output position) pairs of the im2col features.
"""
from __future__ import annotations

import math

import torch

from ..errors import check_choice
from ..errors import check_int, check_number
from .base import DYNAMIC_DEFAULTS, GRADIENT_DEFAULTS, Layer, Method, Plan
from .candidates import Candidates, inactive_positions, scored_candidates
from .registry import register
from .scores import SAMPLERS, sampler_weights
from .select import bottom_k, count_of, top_k
from ..schedule import parse_schedule


@register
class GSE(Method):
    """Grow the k = min(rule(α_t·nnz), |S|) best of the sampled candidates S (value 0), then prune the k
    smallest |θ| of the old active set. ``scope="global"`` does one top-k / bottom-k over all layers."""

    name = "gse"
    uses_gradient = True
    parameters = {**DYNAMIC_DEFAULTS, **GRADIENT_DEFAULTS, "gamma": 1.0, "sampler": "uniform", "scope": "local",
                  "exhaustive_density": 0.5, "sddmm_budget_mib": 256.0}

    def configure(self) -> None:
        hp = self.hp
        self.gamma = parse_schedule(hp["gamma"], "gamma")
        for v in self.gamma.values():
            check_number(v, "gamma", 0.0, float("inf"), low_open=True)
        self.sampler = check_choice(hp["sampler"], "sampler", SAMPLERS)
        self.scope = check_choice(hp["scope"], "scope", ("local", "global"))
        self.exhaustive_density = check_number(hp["exhaustive_density"], "exhaustive_density", 0.0, 1.0)
        budget = check_number(hp["sddmm_budget_mib"], "sddmm_budget_mib", 0.0, float("inf"), low_open=True)
        self.budget_bytes = int(budget * (1 << 20))
        check_int(hp["score_batches"], "score_batches", 0)

    def candidates(self, layer: Layer, step: int) -> Candidates:
        """The sorted candidate positions S of one layer at ``step`` with their |∇θ|."""
        parts = layer.parts()
        if layer.nnz >= self.exhaustive_density * layer.total:
            return Candidates.from_linear(inactive_positions(layer.active(), layer.total), layer.shape, parts,
                                          self.budget_bytes)
        m = int(math.ceil(round(self.gamma(step, self.total_steps) * layer.nnz, 9)))
        f, g = sampler_weights(parts, self.sampler, self.generator(step, layer, 1))
        return scored_candidates(layer.active_csr(), layer.active, layer.shape, m, self.generator(step, layer),
                                 parts, f, g, self.budget_bytes)

    def plan_layer(self, layer: Layer, k: int, step: int) -> Plan | None:
        found = self.candidates(layer, step)
        k = min(k, len(found))
        return Plan(layer.smallest(k), found.linear(top_k(found.scores, k)), candidates=len(found))

    def plan(self, step: int, alpha: float) -> dict[int, Plan]:
        if self.scope == "local":
            return super().plan(step, alpha)
        k = count_of(alpha, sum(layer.nnz for layer in self.layers), self.k_rounding)
        if k == 0:
            return {}
        found = [self.candidates(layer, step) for layer in self.layers]
        scores = torch.cat([c.scores for c in found])
        k = min(k, scores.numel())
        grow = top_k(scores, k)                       # ties: lower layer index, then lower position
        drop = bottom_k(torch.cat([layer.layout.slot_values() for layer in self.layers]), k, absolute=True)
        plans, c_start, m_start = {}, 0, 0
        for layer, cand in zip(self.layers, found):
            c_end, m_end = c_start + len(cand), m_start + layer.nnz
            g = grow[(grow >= c_start) & (grow < c_end)] - c_start
            d = drop[(drop >= m_start) & (drop < m_end)] - m_start
            plans[layer.index] = Plan(d, cand.linear(g), candidates=len(cand))
            c_start, m_start = c_end, m_end
        return plans
