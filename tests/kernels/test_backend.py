"""Backend selection: active_backends(), the SPARSETRAIN_KERNELS override, and a real unavailable build."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sparsetrain import kernels
from sparsetrain.errors import ConfigError
from sparsetrain.kernels import backend, torch_ops


def test_active_backends_reports_both_devices(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "auto")
    report = kernels.active_backends()
    assert set(report) == {"cpu", "cuda"}
    assert report["cpu"] == "cpp" or report["cpu"].startswith("torch-sparse (ours unavailable")
    assert report["cuda"].split(" [")[0] in ("triton",) or report["cuda"].startswith("torch-sparse")
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    assert kernels.active_backends()["cpu"] == "torch-sparse (SPARSETRAIN_KERNELS=torch)"


def test_env_override_selects_the_implementation(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    assert backend.implementation(torch.device("cpu"), torch.float32) is torch_ops
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    from sparsetrain.kernels import cpp_ext

    assert backend.implementation(torch.device("cpu"), torch.float32) is cpp_ext


def test_env_override_rejects_unknown_value(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    with pytest.raises(ConfigError, match=r"SPARSETRAIN_KERNELS must be one of 'auto', 'cpp', 'torch'; got 'fast'"):
        kernels.spmm(torch.zeros(2, dtype=torch.int32), torch.zeros(1, dtype=torch.int32), torch.ones(1),
                     torch.ones(1, 2), 1)


def test_forced_cpp_rejects_a_dtype_it_does_not_cover(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    with pytest.raises(kernels.KernelUnavailableError, match="support dtypes float32, float64, bfloat16; got float16"):
        backend.implementation(torch.device("cpu"), torch.float16)
    monkeypatch.setenv(backend.ENV_VAR, "auto")
    assert backend.implementation(torch.device("cpu"), torch.float16) is torch_ops


_UNBUILDABLE = textwrap.dedent("""
    import warnings, torch
    from sparsetrain import kernels
    crow, col = torch.tensor([0, 1, 1], dtype=torch.int32), torch.tensor([1], dtype=torch.int32)
    x = torch.ones(3, 2)
    try:
        kernels.spmm(crow, col, torch.ones(1), x, 3)
    except kernels.KernelUnavailableError as exc:
        print("ERROR:", exc)
    import os; os.environ["SPARSETRAIN_KERNELS"] = "auto"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = kernels.spmm(crow, col, torch.ones(1), x, 3)
        kernels.spmm(crow, col, torch.ones(1), x, 3)
    ours = [w for w in caught if issubclass(w.category, kernels.KernelFallbackWarning)]
    print("WARNINGS:", len(ours), ours[0].category.__name__, ours[0].message)
    print("RESULT:", out.tolist())
    print("BACKENDS:", kernels.active_backends()["cpu"])
""")


def test_unavailable_cpp_build_errors_when_forced_and_warns_once_otherwise(tmp_path):
    """A build directory that cannot be created makes the extension really unavailable (fresh process)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = dict(os.environ, SPARSETRAIN_KERNELS="cpp", SPARSETRAIN_BUILD_DIR=str(blocker / "sub"))
    proc = subprocess.run([sys.executable, "-c", _UNBUILDABLE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ERROR: SPARSETRAIN_KERNELS=cpp requires our cpu kernels, but they are unavailable" in out
    assert "set SPARSETRAIN_KERNELS=auto or torch" in out
    assert "WARNINGS: 1 KernelFallbackWarning sparsetrain: our cpu sparse kernels are unavailable" in out
    assert "RESULT: [[1.0, 1.0], [0.0, 0.0]]" in out  # row 0 takes x[1] = ones; row 1 is empty
    assert "BACKENDS: torch-sparse (ours unavailable:" in out
