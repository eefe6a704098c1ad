"""How a sparse weight is stored: one protocol (``Layout``), three storages (compressed, masked, diagonal)."""
from .base import GatherRemap, Layout, SlotRemap, ZeroRemap
from .compressed import CompressedLayout, index_dtype_for, random_linear_indices
from .diagonal import DiagonalLayout
from .masked import MaskedLayout

LAYOUTS = ("compressed", "masked", "diagonal")

__all__ = ["Layout", "SlotRemap", "GatherRemap", "ZeroRemap", "CompressedLayout", "MaskedLayout", "DiagonalLayout",
           "random_linear_indices", "index_dtype_for", "LAYOUTS"]
