"""The training loop: optimizers, LR per step, method wiring, dense runs, output folder rules."""
import copy
import importlib.util
import json
import math

import pytest
import torch

from sparsetrain import sparse_layers
from sparsetrain.errors import ConfigError
from sparsetrain.train import Trainer
from sparsetrain.train.config import resolve


def _records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.parametrize("optim", ["adamw", "adam", "sgd"])
def test_optimizer_state_follows_global_topology_changes(tmp_path, tiny_config, optim):
    """Under global scope each layer's nnz drifts; every parameter-shaped optimizer tensor must follow."""
    tiny_config["optim"] = {"name": optim, "lr": 0.01 if optim != "sgd" else 0.1}
    tiny_config["train"].update(checkpoint_every=0, label_smoothing=0.1)
    trainer = Trainer(tiny_config, tmp_path / "run")
    summary = trainer.fit()
    assert summary["topology_updates"] == len(_records(tmp_path / "run", "update")) > 0
    start = {r["step"]: r for r in _records(tmp_path / "run", "init")}[0]["layer_density"]
    layers = sparse_layers(trainer.model)
    assert any(abs(layers[n].density - d) > 1e-9 for n, d in start.items())  # nnz really moved between layers
    for module in layers.values():
        param = module.layout.parameter
        for key, value in trainer.optimizer.state[param].items():
            if torch.is_tensor(value) and value.ndim:
                assert value.shape == param.shape, key


def test_lr_schedule_is_applied_per_step(tmp_path, tiny_config):
    tiny_config["schedule"] = {"name": "multistep", "warmup_epochs": 0, "milestones": [0.5], "gamma": 0.5}
    tiny_config["train"].update(log_every=1, checkpoint_every=0)
    trainer = Trainer(tiny_config, tmp_path / "run")
    trainer.fit()
    per_epoch = trainer.steps_per_epoch
    lrs = {r["step"]: r["lr"] for r in _records(tmp_path / "run", "train")}
    milestone = round(0.5 * per_epoch)
    assert lrs[milestone] == pytest.approx(0.1)        # step index milestone-1 still at full lr
    assert lrs[milestone + 1] == pytest.approx(0.05)   # step index milestone is the first at gamma·lr
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_dense_run_has_no_sparse_layers(tmp_path, tiny_config):
    tiny_config["method"] = {"name": "dense"}
    trainer = Trainer(tiny_config, tmp_path / "run")
    summary = trainer.fit()
    assert trainer.method is None and not sparse_layers(trainer.model)
    assert summary["topology_updates"] == 0 and summary["account"]["totals"]["sparsity"] == 0.0


def test_score_batches_draws_extra_batches_and_resumes(tmp_path, tiny_config):
    """score_batches > 0: growth is scored on batches from a second loader whose position is checkpointed."""
    tiny_config["method"]["gse"]["score_batches"] = 2
    trainer = Trainer(tiny_config, tmp_path / "run")
    trainer.fit()
    assert trainer.score_loader is not None and trainer.score_loader.state_dict() != {"epoch": 0, "position": 0}
    assert trainer.loader.state_dict()["epoch"] >= 1


def test_refuses_to_overwrite_a_run(tmp_path, tiny_config):
    tiny_config["train"]["max_steps"] = 5
    Trainer(tiny_config, tmp_path / "run").fit()
    with pytest.raises(ConfigError, match="already holds checkpoints; resume it with --resume"):
        Trainer(tiny_config, tmp_path / "run").fit()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_requested_but_missing():
    with pytest.raises(ConfigError, match="train.tensorboard=true needs the tensorboard package"):
        resolve(None, ["train.tensorboard=true"])


def test_bf16_on_cpu_is_mixed_precision_with_float32_weights(tmp_path, tiny_config):
    """train.bf16 on the CPU: the sparse layers run our bfloat16 kernels under autocast (their outputs are
    bfloat16) while weights and optimizer state stay float32; the run trains, differently from float32."""
    tiny_config["train"].update(checkpoint_every=0)
    plain = Trainer(copy.deepcopy(tiny_config), tmp_path / "fp32")
    plain.fit()
    tiny_config["train"]["bf16"] = True
    trainer = Trainer(tiny_config, tmp_path / "bf16")
    summary = trainer.fit()
    assert summary["topology_updates"] > 0
    losses = [r["loss"] for r in _records(tmp_path / "bf16", "train")]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert losses != [r["loss"] for r in _records(tmp_path / "fp32", "train")]
    layers = sparse_layers(trainer.model)
    seen = []
    for module in layers.values():
        module.register_forward_hook(lambda m, inputs, output: seen.append(output.dtype))
    x, y = next(iter(trainer.test_loader))
    trainer._forward(x, y)
    assert seen and set(seen) == {torch.bfloat16}
    for module in layers.values():
        param = module.layout.parameter
        assert param.dtype == torch.float32
        assert all(v.dtype == torch.float32 for v in trainer.optimizer.state[param].values()
                   if torch.is_tensor(v) and v.ndim)
