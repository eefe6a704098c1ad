"""How a sparse weight is stored: one protocol (``Layout``), two storages."""
from .base import GatherRemap, Layout, SlotRemap, ZeroRemap
from .compressed import CompressedLayout, index_dtype_for, random_linear_indices
from .masked import MaskedLayout

LAYOUTS = ("compressed", "masked")

__all__ = ["Layout", "SlotRemap", "GatherRemap", "ZeroRemap", "CompressedLayout", "MaskedLayout",
           "random_linear_indices", "index_dtype_for", "LAYOUTS"]
