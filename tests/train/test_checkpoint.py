import os
import pickle
import random

import numpy as np
import pytest
import torch

from sparsetrain import SparseLinear
from sparsetrain.train import checkpoint as ckpt


def _payload(layer):
    return {"model": layer.state_dict(), "optimizer": {}, "method": None, "loader": {"epoch": 0, "position": 3}}


def test_roundtrip_restores_rng_and_sparse_state(tmp_path):
    layer = SparseLinear(20, 10, sparsity=0.8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    path = ckpt.save_checkpoint(tmp_path, 7, _payload(layer))
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    state = ckpt.load_checkpoint(path)
    ckpt.set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]
    other = SparseLinear(20, 10, nnz=5)  # different nnz: loading resizes
    other.load_state_dict(state["model"])
    assert torch.equal(other.dense_weight(), layer.dense_weight()) and state["step"] == 7


def test_keeps_newest_two_and_leaves_no_temp_files(tmp_path):
    layer = SparseLinear(4, 3, sparsity=0.5)
    for step in (5, 10, 15):
        ckpt.save_checkpoint(tmp_path, step, _payload(layer), keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000015.pt", "step-00000010.pt"]
    assert sorted(os.listdir(ckpt.checkpoint_dir(tmp_path))) == ["step-00000010.pt", "step-00000015.pt"]


def test_truncated_newest_falls_back_to_previous(tmp_path, capsys):
    layer = SparseLinear(4, 3, sparsity=0.5)
    ckpt.save_checkpoint(tmp_path, 5, _payload(layer))
    newest = ckpt.save_checkpoint(tmp_path, 10, _payload(layer))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="step-00000010.pt.*cannot be read"):
        ckpt.load_checkpoint(newest)
    path, state = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "step-00000005.pt" and state["step"] == 5
    assert "step-00000010.pt" in capsys.readouterr().err


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_foreign_and_code_carrying_files_are_refused(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a sparsetrain checkpoint"):
        ckpt.load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(ckpt.CheckpointError, match="evil.pt.*cannot be read"):
        ckpt.load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ckpt.CheckpointError, match="has no checkpoint"):
        ckpt.latest_checkpoint(tmp_path / "empty-run")
