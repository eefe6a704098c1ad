"""The command line: every subcommand's help, the demo end to end (test-sized), eval, info, bad input."""
import json
from pathlib import Path

import pytest
import torch

from sparsetrain.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("command", ["train", "eval", "report", "info"])
def test_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_bare_command_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("train", "eval", "report", "bench", "info"))


def test_demo_runs_end_to_end_test_sized(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["train", "--set", "train.max_steps=12", "--set", "train.log_every=5", "--out", str(run),
                 "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for needle in ("test accuracy", "sparsity (weight layers)", "parameter memory", "peak memory",
                   "topology updates", "2048x2048"):
        assert needle in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "init" and "train" in kinds and kinds[-1] == "eval"
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 12]
    assert all(k in train[0] for k in ("epoch", "loss", "accuracy", "lr", "sparsity", "active_weights",
                                       "step_seconds", "peak_rss_bytes"))
    assert abs(train[0]["sparsity"] - 0.9) < 1e-3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["method"] == "gse" and 0 <= summary["test_accuracy"] <= 1
    assert summary["account"]["totals"]["active"] == train[0]["active_weights"]
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "step-00000012.pt").is_file()

    # eval on the same run prints the accuracy of the final checkpoint and the accounting table
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{100 * summary['test_accuracy']:.2f}%" in out and "active / total" in out


def test_dry_run_prints_resolved_config(capsys):
    assert main(["train", "--config", str(CONFIGS / "vit_cifar100.yaml"), "--set", "method.name=rigl",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "name: rigl" in out and "lr: 0.01" in out


@pytest.mark.parametrize("argv, expected", [
    (["train", "--set", "optim.lr=-1"], "optim.lr must be a number in (0.0, inf); got -1"),
    (["train", "--set", "method.gse.deltat=5"], "did you mean 'method.gse.delta_t'"),
    (["train", "--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
    (["train", "--config", str(CONFIGS / "resnet56_cifar10.yaml"), "--set", "data.root=/no/such/dir"],
     "data.root must be an existing directory; got '/no/such/dir'"),
    (["train", "--resume", "/no/such/run"], "not a run folder"),
    (["train", "--resume", ".", "--set", "optim.lr=1"], "drop --config/--set"),
    (["eval", "/no/such/run"], "has no config.yaml"),
    (["report", "/no/such/run"], "run folder '/no/such/run' does not exist"),
])
def test_bad_input_is_a_clear_error(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsetrain: error: ") and expected in err


def test_missing_cifar_folder_names_data_root(tmp_path, capsys):
    assert main(["train", "--config", str(CONFIGS / "resnet56_cifar10.yaml"), "--set", f"data.root={tmp_path}",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"data.root='{tmp_path}'" in err and "cifar10" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_an_error_not_a_cpu_run(tmp_path, capsys):
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert "device='cuda' but CUDA is not available" in capsys.readouterr().err


def test_info_lists_versions_and_backends(capsys, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", "auto")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out and "kernels (cpu)" in out and "gse" in out and "mnist1d" in out
    if "kernels (cpu)   cpp" in out:
        assert "cpp (float32, float64, bfloat16)" in out
    assert "value storage" in out and "SPARSETRAIN_CPU_VALUE_BLOCK=auto" in out
    monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", "many")
    assert main(["info"]) == 0
    assert "value storage   invalid: SPARSETRAIN_CPU_VALUE_BLOCK='many': allowed are 'auto'" in capsys.readouterr().out
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", "auto")
    assert main(["info"]) == 0
    assert "forward walk    in storage order for float32/float64 row blocks" in capsys.readouterr().out
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", "yes")
    assert main(["info"]) == 0
    assert ("forward walk    invalid: SPARSETRAIN_CPU_STORAGE_WALK='yes': allowed are 'auto', '1' (always) or '0'"
            in capsys.readouterr().out)


def test_python_dash_m_entry_point():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "sparsetrain", "info"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "sparsetrain" in result.stdout


def test_bench_forwards_its_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "usage: sparsetrain bench" in capsys.readouterr().out


def test_bench_config_error_is_a_one_line_message(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["bench", "gpu", "--quick", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsetrain: error: bench gpu --device cpu") and "TRITON_INTERPRET=1" in err
