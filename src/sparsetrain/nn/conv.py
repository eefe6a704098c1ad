"""SparseConv2d (compressed weight, im2col + sparse kernels) and MaskedConv2d (dense conv × mask).

A conv is a linear layer over im2col features (methods/gse.md §2.1): inputs are the C_in·k_h·k_w
patch entries in PyTorch weight order, outputs the C_out channels, and every (sample, output position)
pair is a row.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..kernels import sparse_linear
from ..layout import CompressedLayout
from .base import SparseModule, kernel_operands, make_layout, resolve_nnz
from .linear import MaskedModule


def conv_features(x: torch.Tensor, kernel_size, dilation, padding, stride) -> torch.Tensor:
    """Feature-major im2col: (C_in·k_h·k_w, N·H_out·W_out), column index n·L + l."""
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


class _ConvShape:
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def _geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups) -> None:
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int or a pair of ints, got {padding!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups = int(groups)
        for field in ("kernel_size", "stride", "dilation"):
            if min(getattr(self, field)) < 1:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        if min(self.padding) < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups must be a positive divisor of in_channels and out_channels, got {groups}")

    @property
    def conv_weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1  # type: ignore[return-value]
                     for size, p, d, k, s in zip((height, width), self.padding, self.dilation, self.kernel_size,
                                                 self.stride))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, nnz={self.nnz}, "
                f"sparsity={self.sparsity:.4f}")

    def to_dense(self) -> nn.Conv2d:
        """A dense nn.Conv2d with the same function (export)."""
        param = self.layout.parameter
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.dilation, self.groups, bias=self.bias is not None, device=param.device,
                          dtype=param.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    @classmethod
    def _conv_kwargs(cls, module: nn.Conv2d) -> dict:
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ValueError(f"from_dense needs numeric zero padding, got padding={module.padding!r}, "
                             f"padding_mode={module.padding_mode!r}")
        return dict(in_channels=module.in_channels, out_channels=module.out_channels,
                    kernel_size=_pair(module.kernel_size), stride=_pair(module.stride),
                    padding=_pair(module.padding), dilation=_pair(module.dilation), groups=module.groups)


class SparseConv2d(_ConvShape, SparseModule):
    """2-D convolution with a compressed weight: im2col features times a sparse (C_out × C_in·k·k) matrix."""

    layout: CompressedLayout

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, sparsity: float | None = None, nnz: int | None = None,
                 generator: torch.Generator | None = None, device=None, dtype=None):
        super().__init__()
        if groups != 1:
            raise NotImplementedError(f"SparseConv2d supports groups=1 only, got groups={groups}; "
                                      "use MaskedConv2d (layout='masked') or exclude the layer")
        self._geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        shape = self.conv_weight_shape
        count = resolve_nnz((shape[0], shape[1] * shape[2] * shape[3]), sparsity, nnz)
        self._setup(make_layout("compressed", shape, count, generator, device, dtype), shape, bias, generator)

    @classmethod
    def from_dense(cls, module: nn.Conv2d, *, sparsity: float | None = None) -> "SparseConv2d":
        """Keep the nonzeros of ``module.weight`` (or its largest |w| at ``sparsity``)."""
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise NotImplementedError(f"SparseConv2d supports groups=1 only, got groups={module.groups}")
        return cls._build_from_dense(module, nn.Conv2d, "compressed", sparsity, cls._conv_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        n = x.shape[0]
        h_out, w_out = self.output_size(x.shape[2], x.shape[3])
        features = conv_features(x, self.kernel_size, self.dilation, self.padding, self.stride)
        L = self.layout
        features, values = kernel_operands(features, L.values)
        y = sparse_linear(features.t(), values, L.crow, L.col, L.transposed, L.shape[1],
                          self.backward_observer, L.slots(), L.storage_walk(values.dtype))
        y = y.t().reshape(self.out_channels, n, h_out, w_out).permute(1, 0, 2, 3)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y


class MaskedConv2d(_ConvShape, MaskedModule):
    """A dense conv whose weight is multiplied by a boolean mask (masked-dense: costs dense FLOPs)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, sparsity: float | None = None, nnz: int | None = None,
                 generator: torch.Generator | None = None, device=None, dtype=None, dense_grad: bool = False):
        super().__init__()
        self._geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self.dense_grad = dense_grad
        shape = self.conv_weight_shape
        count = resolve_nnz((shape[0], shape[1] * shape[2] * shape[3]), sparsity, nnz)
        self._setup(make_layout("masked", shape, count, generator, device, dtype), shape, bias, generator)

    @classmethod
    def from_dense(cls, module: nn.Conv2d, *, sparsity: float | None = None, dense_grad: bool = False) -> "MaskedConv2d":
        """Keep the nonzeros of ``module.weight`` (or its largest |w| at ``sparsity``)."""
        return cls._build_from_dense(module, nn.Conv2d, "masked", sparsity,
                                     lambda m: {**cls._conv_kwargs(m), "dense_grad": dense_grad})

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups != 1:
            raise NotImplementedError("backward observers (growth scoring) need groups=1 on MaskedConv2d")
        return conv_features(x, self.kernel_size, self.dilation, self.padding, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        y = F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self._observe(lambda: self._features(x), y)
