"""What every sparse module shares: a layout, an optional bias, sparse-aware init, and a backward hook."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import ConfigError, check_sparsity
from ..layout import CompressedLayout, Layout, MaskedLayout
from ..layout.compressed import random_linear_indices

BackwardObserver = Callable[[torch.Tensor, torch.Tensor], None]


def resolve_nnz(shape: tuple[int, int], sparsity: float | None, nnz: int | None) -> int:
    """Active-weight count from exactly one of ``sparsity`` or ``nnz``, validated."""
    total = shape[0] * shape[1]
    if (sparsity is None) == (nnz is None):
        raise ConfigError("give exactly one of sparsity (fraction of zeros in [0, 1)) or nnz (active weights)")
    if nnz is not None:
        if isinstance(nnz, bool) or not isinstance(nnz, int) or not 1 <= nnz <= total:
            raise ConfigError(f"nnz must be an integer in [1, {total}] for a {shape[0]}x{shape[1]} weight, got {nnz!r}")
        return nnz
    sparsity = check_sparsity(sparsity)
    return max(1, int(math.floor((1.0 - sparsity) * total + 0.5)))


def make_layout(kind: str, weight_shape: tuple[int, ...], nnz: int, generator: torch.Generator | None,
                device=None, dtype=None) -> Layout:
    """A layout of ``kind`` with ``nnz`` uniformly random active positions and zero values."""
    shape2d = (weight_shape[0], math.prod(weight_shape[1:]))
    lin = random_linear_indices(shape2d, nnz, generator, device or "cpu")
    if kind == "compressed":
        return CompressedLayout(shape2d, lin, dtype=dtype)
    if kind == "masked":
        return MaskedLayout.from_linear_indices(weight_shape, lin, dtype=dtype)
    raise ConfigError(f"layout must be one of 'compressed', 'masked'; got {kind!r}")


def kernel_operands(x: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and values in one dtype for the sparse kernels.

    Under autocast both are cast to the autocast dtype (mixed precision: the cast is differentiable, so the
    float32 values get a float32 gradient) — on CUDA any autocast dtype, on the CPU bfloat16, which our CPU
    kernels compute (float16 they do not); otherwise the input is cast to the values' dtype, so a
    lower-precision tensor arriving from a dense layer is computed in the values' dtype rather than rejected.
    """
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        if device == "cuda" or dtype == torch.bfloat16:
            return x.to(dtype), values.to(dtype)
    return x.to(values.dtype), values


class SparseModule(nn.Module):
    """Base of SparseLinear, SparseConv2d, MaskedLinear and MaskedConv2d.

    ``backward_observer(x_fm, gy_fm)``, when set, is called during backward with the layer's
    feature-major input (fan_in, R) and output gradient (n_out, R): dynamic-sparse methods arm it
    before an update step to score candidates from the batch they already computed.
    """

    layout: Layout
    weight_shape: tuple[int, ...]

    def _setup(self, layout: Layout, weight_shape: tuple[int, ...], bias: bool, generator=None, init=True) -> None:
        self.layout = layout
        self.weight_shape = tuple(int(s) for s in weight_shape)
        param = layout.parameter
        self.bias = nn.Parameter(torch.zeros(weight_shape[0], dtype=param.dtype, device=param.device)) if bias else None
        self.backward_observer: Optional[BackwardObserver] = None
        if init:
            self.reset_parameters(generator)

    @property
    def nnz(self) -> int:
        return self.layout.nnz

    @property
    def sparsity(self) -> float:
        return self.layout.sparsity

    @property
    def density(self) -> float:
        return self.layout.density

    @property
    def values(self) -> torch.Tensor:
        """The active values in slot order, aligned with :meth:`coordinates` (the parameter itself unless a
        compressed layout stores them in row-block order: then a differentiable gathered copy)."""
        layout = self.layout
        return layout.slot_values(layout.values) if isinstance(layout, CompressedLayout) else layout.values

    @property
    def is_compressed(self) -> bool:
        return isinstance(self.layout, CompressedLayout)

    def coordinates(self) -> torch.Tensor:
        return self.layout.coordinates()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Sparse-aware init (methods/gse.md §2.2): unit j with active fan-in f_j draws U(±√(3/f_j))."""
        layout = self.layout
        if isinstance(layout, CompressedLayout):
            bound = torch.sqrt(3.0 / layout.fan_in().clamp(min=1).to(layout.values.dtype))
            noise = torch.rand(layout.nnz, generator=generator, device=layout.values.device)
            layout.set_slot_values((noise * 2 - 1) * bound[layout.row.long()])
        else:
            assert isinstance(layout, MaskedLayout)
            mask2d = layout.mask.view(layout.shape)
            bound = torch.sqrt(3.0 / mask2d.sum(1).clamp(min=1).to(layout.weight.dtype))
            noise = torch.rand(layout.shape, generator=generator, device=layout.weight.device)
            layout.weight.copy_(((noise * 2 - 1) * bound[:, None] * mask2d).view_as(layout.weight))
        if self.bias is not None:
            noise = torch.rand(self.bias.shape, generator=generator, device=self.bias.device)
            self.bias.copy_((noise * 2 - 1) * bound)

    @torch.no_grad()
    def load_dense_(self, weight: torch.Tensor) -> "SparseModule":
        """Copy the entries of a dense weight at the active positions (the topology is kept)."""
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"weight must have shape {self.weight_shape}, got {tuple(weight.shape)}")
        flat = weight.reshape(-1).to(self.layout.parameter.dtype)
        lin = self.layout.linear_indices()
        if isinstance(self.layout, CompressedLayout):
            self.layout.set_slot_values(flat[lin])
        else:
            self.layout.weight.view(-1).zero_()
            self.layout.weight.view(-1)[lin] = flat[lin]
        return self

    def dense_weight(self) -> torch.Tensor:
        """The dense weight in the native shape: for tests and export only."""
        return self.layout.to_dense().reshape(self.weight_shape)

    @staticmethod
    def _kept_positions(weight: torch.Tensor, sparsity: float | None) -> torch.Tensor:
        """Sorted flat positions a conversion keeps: the nonzeros, or the largest |w| at ``sparsity``."""
        flat = weight.detach().reshape(-1)
        if sparsity is None:
            return torch.nonzero(flat).flatten()
        nnz = resolve_nnz((weight.shape[0], flat.numel() // weight.shape[0]), sparsity, None)
        return torch.sort(torch.topk(flat.abs(), nnz, sorted=False).indices).values

    @classmethod
    def _build_from_dense(cls, module: nn.Module, expected_type: type, layout_kind: str, sparsity: float | None,
                          geometry: Callable[[nn.Module], dict]) -> "SparseModule":
        """Shared body of every ``from_dense``; ``geometry(module)`` gives the subclass's attributes."""
        if not isinstance(module, expected_type):
            raise TypeError(f"{cls.__name__}.from_dense expects an {expected_type.__name__}, got {type(module).__name__}")
        kwargs = geometry(module)
        weight = module.weight
        lin = cls._kept_positions(weight, sparsity)
        if lin.numel() == 0:
            raise ValueError("from_dense: the weight has no nonzero entry to keep")
        shape2d = (weight.shape[0], weight[0].numel())
        if layout_kind == "compressed":
            layout = CompressedLayout(shape2d, lin, weight.detach().reshape(-1)[lin])
        else:
            layout = MaskedLayout.from_linear_indices(tuple(weight.shape), lin, dtype=weight.dtype)
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new._configure(**kwargs)
        new._setup(layout, tuple(weight.shape), module.bias is not None, init=False)
        new.load_dense_(weight)
        if module.bias is not None:
            new.bias.data.copy_(module.bias.detach())
        return new

    def _configure(self, **kwargs) -> None:
        """Set the geometry attributes (in/out features, conv parameters) of a subclass."""
        for key, value in kwargs.items():
            setattr(self, key, value)
