"""DiagonalLinear: a Linear whose weight is K learned wrap-around diagonals (methods/dynadiag.md §2).

W = Σ_{j∈Sel} a_j · Π_j · diag(V_j): Sel is the selected set of K of the P = max(M, N) diagonals and a_j
their soft weights, α̃ = clamp(K · softmax(α / T), 0, 1) of a learnable importance α ∈ R^P at temperature T.
The module is self-contained: it holds α, the temperature and the frozen flag as state, so forward,
evaluation and export need no method; ``method='dynadiag'`` anneals T, re-selects the top-K after every
optimizer step and freezes. Forward and backward run the diagonal kernel: nothing of size M × N exists.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError, check_choice, check_number, check_sparsity
from ..kernels.diagonal import diagonal_count, diagonal_linear
from ..layout.diagonal import DiagonalLayout
from .base import SparseModule, kernel_operands

MODES = ("sparse", "reference")


def diagonal_budget(sparsity: float, out_features: int, in_features: int) -> int:
    """K = clip(ceil((1 − S) · P − 1e-9), 1, P) (D6): 768 × 3072 at S = 0.9 gives 308."""
    p, _ = diagonal_count(out_features, in_features)
    return min(p, max(1, math.ceil((1.0 - check_sparsity(sparsity)) * p - 1e-9)))


class DiagonalLinear(SparseModule):
    """y = x Wᵀ + b with W made of ``K`` diagonals (from ``sparsity`` or ``diagonals``); nn.Linear only.

    ``mode="sparse"`` computes only the K selected diagonals, weighted by α̃ (zero cost for the others);
    ``"reference"`` computes all P weighted by α̃, as the public DynaDiag code does (needs full storage).
    α starts at 1/P plus N(0, ``alpha_noise``²) so the initial top-K is a random, tie-free choice (D4).
    """

    def __init__(self, in_features: int, out_features: int, *, sparsity: float | None = None,
                 diagonals: int | None = None, bias: bool = True, storage: str = "compact",
                 alpha_noise: float = 1e-3, generator: torch.Generator | None = None, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        p, d = diagonal_count(self.out_features, self.in_features)
        if (sparsity is None) == (diagonals is None):
            raise ConfigError("give exactly one of sparsity (fraction of zeros in [0, 1)) or diagonals (K)")
        k = diagonal_budget(sparsity, self.out_features, self.in_features) if diagonals is None else diagonals
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= p:
            raise ConfigError(f"diagonals must be an int in [1, P={p}] for a {out_features}x{in_features} weight, got {k!r}")
        noise = check_number(alpha_noise, "alpha_noise", 0.0, float("inf"))
        alpha = torch.full((p,), 1.0 / p, dtype=torch.float32, device=device)
        alpha += noise * torch.randn(p, generator=generator, device=device)
        self.alpha = nn.Parameter(alpha)
        self.register_buffer("temperature", torch.tensor(1.0, device=device))
        self.register_buffer("frozen", torch.tensor(False, device=device))
        self.mode = "sparse"
        offsets = torch.sort(torch.topk(alpha, k, sorted=False).indices).values
        rows = k if storage == "compact" else p
        values = torch.empty(rows, d, dtype=dtype or torch.get_default_dtype(), device=device)
        layout = DiagonalLayout((self.out_features, self.in_features), offsets, values, storage)
        self._setup(layout, (self.out_features, self.in_features), bias, generator, init=False)
        self.reset_parameters(generator)

    @property
    def diagonals(self) -> int:
        return self.layout.diagonals

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """V ~ U(±1/√D) (kaiming_uniform(a=√5) on the (P, D) diagonal tensor); bias ~ U(±1/√in) as nn.Linear."""
        values = self.layout.values
        bound = 1.0 / math.sqrt(self.layout.length)
        values.copy_((torch.rand(values.shape, generator=generator, device=values.device) * 2 - 1) * bound)
        if self.bias is not None:
            b = 1.0 / math.sqrt(self.in_features)
            self.bias.copy_((torch.rand(self.bias.shape, generator=generator, device=self.bias.device) * 2 - 1) * b)

    def soft_weights(self) -> torch.Tensor:
        """α̃ = clamp(K · softmax(α / T), 0, 1) over all P diagonals (in α's dtype, at least float32)."""
        alpha = self.alpha if self.alpha.dtype == torch.float64 else self.alpha.float()
        return (self.diagonals * torch.softmax(alpha / self.temperature.to(alpha.dtype), 0)).clamp(0.0, 1.0)

    def set_mode(self, mode: str) -> None:
        mode = check_choice(mode, "mode", MODES)
        if mode == "reference" and self.layout.storage != "full":
            raise ConfigError("mode='reference' computes all P diagonals and needs storage='full'")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        layout = self.layout
        if self.mode == "reference" and not bool(self.frozen):
            offsets, values, weights = torch.arange(layout.n_diagonals, device=x.device), layout.values, self.soft_weights()
        else:
            offsets, values = layout.offsets, layout.selected_values()
            weights = None if bool(self.frozen) else self.soft_weights()[layout.offsets]
        x2, values = kernel_operands(x2, values)
        y = diagonal_linear(x2, offsets, values, weights, self.out_features)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    @torch.no_grad()
    def freeze(self, fold: bool = True) -> None:
        """Fix the selection: fold α̃ into the selected values (``fold``; the output is then unchanged), set
        a_j = 1 and stop α's gradient. Afterwards only the selected diagonals are computed."""
        if bool(self.frozen):
            return
        if fold:
            scale = self.soft_weights()[self.layout.offsets].to(self.layout.values.dtype)
            if self.layout.storage == "compact":
                self.layout.values.mul_(scale[:, None])
            else:
                self.layout.values[self.layout.offsets] *= scale[:, None]
        self.frozen.fill_(True)
        self.alpha.requires_grad_(False)

    @torch.no_grad()
    def load_dense_(self, weight: torch.Tensor) -> "DiagonalLinear":
        """Copy a dense weight's entries on the selected diagonals (the selection is kept)."""
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"weight must have shape {self.weight_shape}, got {tuple(weight.shape)}")
        from ..kernels.diagonal import diagonal_coordinates
        rows, cols = diagonal_coordinates(self.layout.offsets, self.out_features, self.in_features)
        picked = weight.to(self.layout.values.dtype)[rows, cols]
        if self.layout.storage == "compact":
            self.layout.values.copy_(picked)
        else:
            self.layout.values[self.layout.offsets] = picked
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.alpha.requires_grad_(not bool(self.frozen))  # a frozen layer's α stays without gradient

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, diagonals={self.diagonals}/"
                f"{self.layout.n_diagonals}, mode={self.mode!r}, bias={self.bias is not None}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups that keep every DiagonalLinear's α out of weight decay (D3)."""
    alphas = {id(m.alpha) for m in model.modules() if isinstance(m, DiagonalLinear)}
    params = [p for p in model.parameters() if p.requires_grad or id(p) in alphas]
    rest = [p for p in params if id(p) not in alphas]
    groups = [{"params": rest, "weight_decay": weight_decay}]
    if alphas:
        groups.append({"params": [p for p in params if id(p) in alphas], "weight_decay": 0.0})
    return groups
