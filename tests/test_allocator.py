"""retain_freed_memory: glibc keeps freed blocks for reuse (no page faults once the heap has settled), bad input.

The settings are process-wide, so the behaviour is checked in a fresh interpreter (other tests measure
memory in this one)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sparsetrain import retain_freed_memory

_PROBE = """
import json, resource, sys, torch
from sparsetrain import allocator
retained = allocator.retain_freed_memory() if sys.argv[1] == "retain" else False

def touch():  # a 64 MiB block: above glibc's mmap threshold, so by default it is mapped fresh each time
    block = torch.empty(64 << 20, dtype=torch.uint8)
    block.fill_(1)
    del block

for _ in range(3):  # the heap grows while small objects settle above the block: faults expected
    touch()
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"retained": retained, "faults": max(faults)}))
"""


def _steady_touch_faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
    pages = (64 << 20) // 4096
    retained = _steady_touch_faults("retain")
    if not retained["retained"]:
        pytest.skip("not glibc: nothing to retain")
    assert retained["faults"] < pages // 10
    assert _steady_touch_faults("default")["faults"] > pages // 2  # what the setting saves


def test_rejects_a_bad_size():
    with pytest.raises(ValueError, match="keep_bytes must be an integer >= 0, got -1"):
        retain_freed_memory(-1)
    with pytest.raises(ValueError, match="keep_bytes must be an integer >= 0, got 1.5"):
        retain_freed_memory(1.5)  # type: ignore[arg-type]
