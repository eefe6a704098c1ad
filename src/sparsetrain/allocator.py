"""Keep freed heap memory for reuse, so topology updates and wide layers do not page-fault memory back in.

A topology update replaces every O(nnz) array of a layer (indices, values, optimizer state, the transposed
index): at n = 16384, 98 % sparse, about 20 MiB each; a step of a wide layer allocates activation-sized
buffers (128 MiB at n = 262144, B = 128). glibc's malloc serves blocks that large from ``mmap`` and
returns them with ``munmap`` (and trims the heap top), so every update and every wide step touches all of
that memory for the first time again: ~1 µs per 4 KiB page, 10-20 % of a GSE update and of a wide step
(``benchmarks/gse_update_bench.py`` reports the page faults). :func:`retain_freed_memory` tells glibc to
serve every block from the heap and to keep freed heap memory mapped, which is what caching allocators
(PyTorch's CUDA allocator, jemalloc, tcmalloc) do by design. The cost: the process keeps its peak heap
size instead of shrinking after a peak.

It changes process-wide malloc settings, so the library never calls it on import: ``sparsetrain train``
and ``sparsetrain bench`` call it; a plain training loop calls it once at start-up.
"""
from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4  # most blocks served by mmap at once; 0: none (the heap serves all; glibc still falls back
#                  to mmap when the heap cannot grow)


def retain_freed_memory(keep_bytes: int = 1 << 30) -> bool:
    """Have glibc serve all blocks from the heap and keep up to ``keep_bytes`` of free heap top mapped
    (at most 2 GiB − 1: glibc takes the threshold as an int).

    Returns whether the settings are in effect: False where the C library is not glibc (other allocators
    have their own caching; nothing is changed). Calling it again is harmless.
    """
    if not isinstance(keep_bytes, int) or isinstance(keep_bytes, bool) or keep_bytes < 0:
        raise ValueError(f"keep_bytes must be an integer >= 0, got {keep_bytes!r}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: musl and others have no such symbol (AttributeError)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    keep = min(keep_bytes, 2**31 - 1)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, keep))
