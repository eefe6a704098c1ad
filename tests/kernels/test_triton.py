"""Triton kernels, run by the Triton interpreter on CPU in a subprocess (TRITON_INTERPRET must precede import)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (pip install triton); the GPU kernels cannot be checked")
def test_triton_kernels_match_float64_reference_under_interpreter():
    script = Path(__file__).with_name("triton_check.py")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "checks passed" in proc.stdout
