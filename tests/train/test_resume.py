"""A run killed with SIGKILL after a checkpoint and resumed ends bit-identical to an uninterrupted run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.train import Trainer
from sparsetrain.train.checkpoint import list_checkpoints, load_checkpoint

_CHILD = """
import json, sys, time
from pathlib import Path
from sparsetrain.train import Trainer

config, run_dir, pause_step = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

def pause(trainer):
    if trainer.step == pause_step:
        (run_dir / "PAUSED").write_text(str(trainer.step))
        time.sleep(600)  # the test kills us here

Trainer(config, run_dir, callbacks=[pause]).fit()
"""


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _final(run_dir):
    state = load_checkpoint(list_checkpoints(run_dir)[0])
    return {k: state[k] for k in ("step", "model", "optimizer", "method", "loader")}


def _losses(run_dir):
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss"), r.get("accuracy"), r.get("active_weights")) for r in records]


def test_sigkill_then_resume_is_bit_identical(tmp_path, tiny_config):
    reference = tmp_path / "reference"
    summary = Trainer(tiny_config, reference).fit()
    assert summary["topology_updates"] >= 6  # updates before and after the kill point

    killed = tmp_path / "killed"
    killed.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(tiny_config), str(killed), "13"], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "PAUSED").exists():
            assert child.poll() is None, "the training subprocess exited before reaching the kill point"
            assert time.monotonic() < deadline, "the training subprocess did not reach step 13"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(killed)] == ["step-00000010.pt", "step-00000005.pt"]

    # Second copy: its newest checkpoint is torn, so resume must fall back to step 5 and still match.
    torn = tmp_path / "torn"
    shutil.copytree(killed, torn)
    newest = list_checkpoints(torn)[0]
    newest.write_bytes(newest.read_bytes()[:1000])

    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    assert main(["train", "--resume", str(torn), "--no-progress"]) == 0
    expected = _final(reference)
    assert expected["step"] == 30
    for run in (killed, torn):
        _assert_same(_final(run), expected, run.name)
        assert _losses(run) == _losses(reference)
        assert json.loads((run / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


class _Stop(Exception):
    pass


def _stop_at(step):
    def callback(trainer):
        if trainer.step == step:
            raise _Stop
    return callback


@pytest.mark.parametrize("stop", [45, 47, 51])  # newest checkpoint before, at (after removing) and after step 46
def test_resume_across_the_forgetting_removal_is_bit_identical(tmp_path, tiny_config, stop):
    tiny_config["train"].update(epochs=4, max_steps=None, checkpoint_every=2, keep_checkpoints=2)
    tiny_config["forgetting"] = {"remove_n": 600, "remove_at": 0.5}  # removal after step 2 · 23 = 46
    reference = tmp_path / "reference"
    summary = Trainer(tiny_config, reference).fit()
    run = tmp_path / "run"
    with pytest.raises(_Stop):
        Trainer(tiny_config, run, callbacks=[_stop_at(stop)]).fit()
    resumed = Trainer.resume(run, progress=False)
    assert resumed.fit()["data_removal"] == summary["data_removal"]
    assert resumed.step == 74
    expected = {**_final(reference), "forgetting": load_checkpoint(list_checkpoints(reference)[0])["forgetting"]}
    _assert_same({**_final(run), "forgetting": load_checkpoint(list_checkpoints(run)[0])["forgetting"]}, expected)
    assert expected["loader"]["removed"].numel() == 600
    assert _losses(run) == _losses(reference)
    assert [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "data"] == \
        [r for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "data"]
    assert (run / "forgetting.json").read_text() == (reference / "forgetting.json").read_text()


@pytest.mark.parametrize("method,sparse,hp", [
    ("mest", {}, {"delta_t": 4, "soft_memory_bound": True, "lam": 0.1}),
    ("dynadiag", {"layout": "diagonal", "distribution": "uniform"}, {"freeze_at": 0.5}),
])
def test_resume_of_mest_and_dynadiag_is_bit_identical(tmp_path, tiny_config, method, sparse, hp):
    """Stopped after the checkpoint of step 10 and resumed: the same weights, topology (MEST's overshoot,
    DynaDiag's selection, temperature and freeze), optimizer and method state as an uninterrupted run."""
    tiny_config["method"] = {"name": method, method: hp}
    tiny_config["sparse"].update(sparse)
    tiny_config["optim"] = {"name": "adam", "lr": 0.01, "weight_decay": 1e-4}
    tiny_config["train"].update(checkpoint_every=10)
    reference, run = tmp_path / "reference", tmp_path / "run"
    Trainer(tiny_config, reference).fit()
    with pytest.raises(_Stop):
        Trainer(tiny_config, run, callbacks=[_stop_at(13)]).fit()
    Trainer.resume(run, progress=False).fit()
    expected = _final(reference)
    _assert_same(_final(run), expected)
    assert _losses(run) == _losses(reference)
    if method == "mest":
        assert expected["method"]["updates"] == 8   # t_0 at creation + every 4 steps of 30
    else:
        frozen = [key for key in expected["model"] if key.endswith(".frozen")]
        assert frozen and all(bool(expected["model"][key]) for key in frozen)   # frozen at step 15 of 30
