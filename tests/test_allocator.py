"""retain_freed_memory: glibc keeps freed blocks for reuse (no page faults the second time), bad input."""
from __future__ import annotations

import resource

import pytest
import torch

from sparsetrain import allocator, retain_freed_memory


def _faults_of(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_blocks_are_reused_without_page_faults():
    if not retain_freed_memory():
        pytest.skip("not glibc: nothing to retain")
    assert allocator.freed_memory_retained()
    pages = (24 << 20) // 4096  # a 24 MiB block: glibc would otherwise mmap it fresh each time

    def touch() -> None:
        block = torch.empty(24 << 20, dtype=torch.uint8)
        block.fill_(1)
        del block

    touch()  # the first time the heap grows: faults expected
    assert _faults_of(touch) < pages // 10


def test_rejects_a_bad_size():
    with pytest.raises(ValueError, match="keep_bytes must be an integer >= 0, got -1"):
        retain_freed_memory(-1)
    with pytest.raises(ValueError, match="keep_bytes must be an integer >= 0, got 1.5"):
        retain_freed_memory(1.5)  # type: ignore[arg-type]
