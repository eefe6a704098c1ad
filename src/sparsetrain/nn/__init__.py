"""Sparse modules and ``sparsify``."""
from .base import SparseModule
from .conv import MaskedConv2d, SparseConv2d, conv_features
from .linear import MaskedLinear, MaskedModule, SparseLinear
from .sparsify import sparse_layers, sparsify

__all__ = ["SparseModule", "SparseLinear", "SparseConv2d", "MaskedLinear", "MaskedConv2d", "MaskedModule",
           "sparsify", "sparse_layers", "conv_features"]
