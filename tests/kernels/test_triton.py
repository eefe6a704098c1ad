"""Triton kernels, run by the Triton interpreter on CPU in a subprocess (TRITON_INTERPRET must precede import)."""
from __future__ import annotations

import importlib.util
import json
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


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_gpu_bench_runs_under_interpreter_and_checks_the_kernels(tmp_path):
    """`sparsetrain bench gpu --device cpu --quick`: every operation and implementation has a time or the
    reason it did not run, and the Triton results agree with the float64 reference."""
    out = tmp_path / "gpu.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = ("import sys; from sparsetrain import bench; "
            f"sys.exit(bench.main(['gpu', '--quick', '--device', 'cpu', '--out', {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu (Triton interpreter)" and "dtype" not in data
    rows = data["rows"]
    assert {(r["operation"], r["implementation"], r["dtype"]) for r in rows} == {
        (op, impl, dtype) for op in ("forward", "grad_input", "grad_values")
        for impl in ("triton", "torch_csr", "dense") for dtype in ("float32", "bfloat16")}
    for r in rows:
        assert ("median_s" in r) != ("error" in r), r
    for r in rows:
        if r["implementation"] == "triton":
            assert r["median_s"] > 0 and r["max_rel_error"] < (1e-5 if r["dtype"] == "float32" else 3e-2), r
    assert "not run because" in proc.stdout


def test_gpu_bench_rejects_bad_settings(monkeypatch):
    from sparsetrain import bench
    from sparsetrain.errors import ConfigError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        bench.main(["gpu", "--quick", "--device", "cpu"])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ConfigError, match=r"--dtypes: 'float16' is not allowed; allowed: float32, bfloat16"):
        bench.main(["gpu", "--quick", "--device", "cpu", "--dtypes", "float32,float16"])
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            bench.main(["gpu", "--quick"])
