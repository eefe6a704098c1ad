"""Smoke test of the benchmark machinery (--quick): it runs, prints a table and writes well-formed JSON."""
from __future__ import annotations

import json
import os
import pathlib
import runpy

import pytest

from sparsetrain import bench


def test_layer_quick_writes_json_with_memory(tmp_path, capsys):
    out = tmp_path / "layer.json"
    assert bench.main(["layer", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["batch"] == 128 and data["dtype"] == "float32" and data["machine"]["threads"] == 2
    dense = [r for r in data["rows"] if r["backend"] == "dense"]
    sparse = [r for r in data["rows"] if r["backend"] != "dense"]
    assert len(dense) == 1 and {r["backend"] for r in sparse} >= {"torch"}
    for r in data["rows"]:
        assert r["min_s"] <= r["median_s"] <= r["max_s"] and r["speedup"] > 0
        assert r["extra_bytes"] > 0  # a step allocates at least its activations and gradients
    assert set(data["crossover"]["sparsity"]) == {r["backend"] for r in sparse}
    assert "speed-up" in capsys.readouterr().out


def test_scaling_and_mlp_quick(tmp_path):
    assert bench.main(["scaling", "--quick", "--out", str(tmp_path / "s.json")]) == 0
    scaling = json.loads((tmp_path / "s.json").read_text())
    assert {r["n"] for r in scaling["rows"]} == {1024, 4096}
    assert all(r["ns_per_connection"] > 0 for r in scaling["rows"])
    assert all(isinstance(e, float) for e in scaling["exponent"].values())
    assert bench.main(["mlp", "--quick", "--out", str(tmp_path / "m.json")]) == 0
    mlp = json.loads((tmp_path / "m.json").read_text())
    assert {r["backend"] for r in mlp["rows"]} >= {"dense", "torch"}
    assert all(r["speedup"] > 0 for r in mlp["rows"])


def test_fit_exponent_and_crossover_helpers():
    assert abs(bench.fit_exponent([1, 2, 4, 8], [3, 12, 48, 192]) - 2.0) < 1e-12
    # speed-up 0.5 at 0.6 and 2.0 at 0.8: log-linear interpolation crosses 1 half-way
    assert abs(bench.crossover([(0.6, 0.5), (0.8, 2.0)]) - 0.7) < 1e-12
    assert bench.crossover([(0.5, 0.2), (0.9, 0.9)]) is None


def _run_script(name: str, args: list[str], out, monkeypatch) -> dict:
    """Run benchmarks/<name> as a script with ``args`` and ``--out out``; its JSON."""
    pytest.importorskip("sparsetrain.kernels.cpp_ext")
    script = pathlib.Path(__file__).parents[2] / "benchmarks" / name
    monkeypatch.setattr("sys.argv", [str(script), *args, "--out", str(out)])
    runpy.run_path(str(script), run_name="__main__")
    return json.loads(out.read_text())


def test_kernel_bench_quick(tmp_path, monkeypatch):
    rows = _run_script("kernel_bench.py", ["--quick", "--repeats", "1"], tmp_path / "k.json", monkeypatch)["rows"]
    assert [(r["n_out"], r["fan_in"]) for r in rows] == [(512, 16), (1024, 64)]
    assert all(r["spmm_ns"] > 0 and r["grad_input_ns"] > 0 and r["sddmm_ns"] > 0 for r in rows)


def test_scaling_repeats_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        bench.main(["scaling", "--repeats", "0"])
    assert "--repeats: must be a whole number >= 1, got '0'" in capsys.readouterr().err


def test_scaling_quick_in_bfloat16_names_its_dtype(tmp_path):
    out = tmp_path / "s16.json"
    assert bench.main(["scaling", "--quick", "--dtype", "bfloat16", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["dtype"] == "bfloat16" and "--dtype bfloat16" in data["command"]
    assert all(r["ns_per_connection"] > 0 for r in data["rows"])


def test_bench_rejects_an_unknown_dtype(capsys):
    with pytest.raises(SystemExit):
        bench.main(["layer", "--dtype", "float16"])
    assert "invalid choice: 'float16' (choose from 'float32', 'bfloat16')" in capsys.readouterr().err


def test_dtype_ab_quick(tmp_path, monkeypatch):
    data = _run_script("dtype_ab.py", ["--quick", "--rounds", "1"], tmp_path / "ab.json", monkeypatch)
    assert [r["n"] for r in data["rows"]] == [1024, 4096] and set(data["exponent"]) == {"float32", "bfloat16"}
    assert all(r["float32_ns"] > 0 and r["bfloat16_ns"] > 0 and r["ratio"] > 0 for r in data["rows"])


def test_value_block_ab_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", "0")  # the script sets its own storages and restores this
    monkeypatch.delenv("SPARSETRAIN_CPU_STORAGE_WALK", raising=False)
    data = _run_script("value_block_ab.py", ["--quick", "--rounds", "1"], tmp_path / "vb.json", monkeypatch)
    (row,) = data["rows"]
    assert row["block_rows"] == 16 and all(row[f"{v}_median_s"] > 0 for v in ("csr", "slots", "walk"))
    assert row["walk_by_default"] is False  # fan-in 64 at 2048 columns: a 16-row block uses a row 0.5 times
    assert os.environ["SPARSETRAIN_CPU_VALUE_BLOCK"] == "0" and "SPARSETRAIN_CPU_STORAGE_WALK" not in os.environ


def test_interleaved_runs_each_step_once_untimed_then_timed_per_round():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timing = bench.interleaved(steps, rounds=3, per_round=2)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert set(timing) == {"a", "b"}
    assert all(t["reps"] == 6 and t["min_s"] <= t["median_s"] <= t["max_s"] for t in timing.values())


def test_transpose_ab_quick(tmp_path, monkeypatch):
    rows = _run_script("transpose_ab.py", ["--quick", "--rounds", "1"], tmp_path / "t.json", monkeypatch)["rows"]
    assert [r["case"].split(",")[0] for r in rows] == ["transposed CSR", "row-block storage after a merge"]
    assert [len(r["variants"]) for r in rows] == [2, 4]
    assert all(v["median_s"] > 0 and v["reps"] == 2 for r in rows for v in r["variants"].values())


def test_diagonal_bench_quick(tmp_path, monkeypatch):
    rows = _run_script("diagonal_bench.py", ["--quick", "--rounds", "1"], tmp_path / "d.json", monkeypatch)["rows"]
    assert [r["shape"] for r in rows] == ["256x256"]
    assert all(r[f"{key}_ms"] > 0 for r in rows for key in ("dense", "unstructured", "diagonal"))
    assert rows[0]["nnz"] == rows[0]["diagonals"] * 256
