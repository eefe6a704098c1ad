"""sparsetrain: neural networks that stay sparse from the first training step to the last."""
from .allocator import retain_freed_memory
from .nn import MaskedConv2d, MaskedLinear, SparseConv2d, SparseLinear, sparse_layers, sparsify

__version__ = "0.1.0"

__all__ = ["sparsify", "sparse_layers", "SparseLinear", "SparseConv2d", "MaskedLinear", "MaskedConv2d",
           "retain_freed_memory", "__version__"]
