"""SparseLinear (compressed, sparse kernels) and MaskedLinear (dense weight × mask)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import sparse_linear
from ..layout import CompressedLayout, MaskedLayout
from .base import SparseModule, kernel_operands, make_layout, resolve_nnz


def _linear_geometry(module: nn.Linear) -> dict:
    return {"in_features": module.in_features, "out_features": module.out_features}


class _LinearShape:
    in_features: int
    out_features: int

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input's last dimension must be in_features="
                             f"{self.in_features}, got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"sparsity={self.sparsity:.4f}, bias={self.bias is not None}")

    def to_dense(self) -> nn.Linear:
        """A dense nn.Linear with the same function (export)."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.layout.parameter.device, dtype=self.layout.parameter.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


class SparseLinear(_LinearShape, SparseModule):
    """y = x Wᵀ + b with W stored compressed; forward and backward never form a dense W or dW."""

    layout: CompressedLayout

    def __init__(self, in_features: int, out_features: int, *, sparsity: float | None = None, nnz: int | None = None,
                 bias: bool = True, generator: torch.Generator | None = None, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        count = resolve_nnz((self.out_features, self.in_features), sparsity, nnz)
        layout = make_layout("compressed", (self.out_features, self.in_features), count, generator, device, dtype)
        self._setup(layout, (self.out_features, self.in_features), bias, generator)

    @classmethod
    def from_dense(cls, module: nn.Linear, *, sparsity: float | None = None) -> "SparseLinear":
        """Keep the nonzeros of ``module.weight`` (or its largest |w| at ``sparsity``)."""
        return cls._build_from_dense(module, nn.Linear, "compressed", sparsity, _linear_geometry)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        lead = x.shape[:-1]
        L = self.layout
        x, values = kernel_operands(x, L.values)
        # a 2-D input goes in as itself, not as a reshaped view: a leaf input then gets its gradient in its
        # own (batch-major) layout from our transpose, instead of autograd copying a transposed view
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        y = sparse_linear(rows, values, L.crow, L.col, L.transposed, self.in_features, self.backward_observer,
                         L.slots(), L.storage_walk(values.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)  # under autocast y is bfloat16: keep it so (no float32 copy)
        return y.reshape(*lead, self.out_features)


class _MaskStraightThrough(torch.autograd.Function):
    """weight × mask in forward, the full dense gradient in backward (SNFS needs dense momentum)."""

    @staticmethod
    def forward(ctx, weight, mask):  # type: ignore[override]
        return weight * mask

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None


class MaskedModule(SparseModule):
    """Shared by masked modules: the effective weight and the observer hook on the output."""

    layout: MaskedLayout
    dense_grad: bool

    def effective_weight(self) -> torch.Tensor:
        if self.dense_grad:
            return _MaskStraightThrough.apply(self.layout.weight, self.layout.mask)
        return self.layout.effective_weight()

    def _observe(self, features_fm, y: torch.Tensor) -> torch.Tensor:
        """Arrange for ``backward_observer(x_fm, gy_fm)`` to run when y's gradient arrives."""
        observer = self.backward_observer
        if observer is not None and y.requires_grad:
            x_fm = features_fm()
            n_out = self.weight_shape[0]
            y.register_hook(lambda gy: observer(x_fm, gy.transpose(0, 1).reshape(n_out, -1).contiguous()
                                                if gy.ndim == 4 else gy.reshape(-1, n_out).t().contiguous()))
        return y


class MaskedLinear(_LinearShape, MaskedModule):
    """A dense nn.Linear weight times a fixed-shape boolean mask (masked-dense: costs dense FLOPs)."""

    def __init__(self, in_features: int, out_features: int, *, sparsity: float | None = None, nnz: int | None = None,
                 bias: bool = True, generator: torch.Generator | None = None, device=None, dtype=None,
                 dense_grad: bool = False):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dense_grad = dense_grad
        count = resolve_nnz((self.out_features, self.in_features), sparsity, nnz)
        layout = make_layout("masked", (self.out_features, self.in_features), count, generator, device, dtype)
        self._setup(layout, (self.out_features, self.in_features), bias, generator)

    @classmethod
    def from_dense(cls, module: nn.Linear, *, sparsity: float | None = None, dense_grad: bool = False) -> "MaskedLinear":
        """Keep the nonzeros of ``module.weight`` (or its largest |w| at ``sparsity``)."""
        return cls._build_from_dense(module, nn.Linear, "masked", sparsity,
                                     lambda m: {**_linear_geometry(m), "dense_grad": dense_grad})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        y = F.linear(x, self.effective_weight(), self.bias)
        return self._observe(lambda: x.reshape(-1, self.in_features).t().contiguous(), y)
