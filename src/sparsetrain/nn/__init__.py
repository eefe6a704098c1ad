"""Sparse modules and ``sparsify``."""
from .base import SparseModule
from .conv import MaskedConv2d, SparseConv2d, conv_features
from .diagonal import DiagonalLinear, param_groups
from .linear import MaskedLinear, MaskedModule, SparseLinear
from .sparsify import sparse_layers, sparsify

__all__ = ["SparseModule", "SparseLinear", "SparseConv2d", "MaskedLinear", "MaskedConv2d", "MaskedModule", "DiagonalLinear",
           "param_groups",
           "sparsify", "sparse_layers", "conv_features"]
