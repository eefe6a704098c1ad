"""Trainer with forgetting.remove_n: removal at epoch e_r, shorter epochs, per-epoch lr, config errors."""
import copy
import json
import math

import pytest
import torch

from sparsetrain.errors import ConfigError
from sparsetrain.train import Trainer
from sparsetrain.train.config import resolve
from sparsetrain.train.schedule import LRSchedule

SPE, KEPT_SPE = 23, 14  # digits: 1438 training examples in batches of 64; 838 kept after removing 600


def _forgetting_config(tiny_config, **train):
    tiny_config["train"].update(epochs=4, max_steps=None, checkpoint_every=0, log_every=1, **train)
    tiny_config["forgetting"] = {"remove_n": 600, "remove_at": 0.5}
    return tiny_config


def _records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_removal_at_epoch_e_r_shortens_the_later_epochs(tmp_path, tiny_config):
    trainer = Trainer(_forgetting_config(tiny_config), tmp_path / "run")
    original_step = trainer._train_step
    batches = []
    trainer._train_step = lambda x, y, log, idx: (batches.append((trainer.step, idx.clone())),
                                                 original_step(x, y, log, idx))[1]
    summary = trainer.fit()
    run = tmp_path / "run"
    assert trainer.removal_plan.step == 2 * SPE and trainer.loader.batches_per_epoch() == KEPT_SPE
    assert trainer.total_steps == summary["steps"] == 2 * SPE + 2 * KEPT_SPE  # e_r·spe + ceil((E - e_r)·spe')

    [data] = _records(run, "data")
    assert data["step"] == 2 * SPE and data["epoch"] == 2 and data["removed"] == 600 and data["remaining"] == 838
    order = json.loads((run / "forgetting.json").read_text())
    removed = torch.tensor(sorted(order["indices"]))
    assert torch.equal(removed, trainer.loader.removed) and len(removed) == 600
    assert order["forgetting_counts"] == sorted(order["forgetting_counts"])  # saved in removal order
    assert all(math.isfinite(f) for f in order["forgetting_counts"])

    # Before the removal every example is seen once per epoch; afterwards no removed one ever again.
    before = torch.cat([idx for step, idx in batches if step < 2 * SPE])
    after = torch.cat([idx for step, idx in batches if step >= 2 * SPE])
    assert torch.equal(torch.sort(before).values, torch.arange(1438).repeat_interleave(2))
    assert not torch.isin(after, removed).any() and len(after) == 2 * 838
    assert (trainer.tracker.last[removed] == -1).all()  # statistics were reset and never saw them since

    assert [r["epoch"] for r in _records(run, "eval")] == [1.0, 2.0, 3.0, 4.0]  # eval_every_epochs stays per epoch
    assert summary["epochs"] == 4.0
    assert summary["data_removal"] == {"requested": 600, "epoch": 2, "removed": 600, "remaining": 838,
                                       "unforgettable": data["unforgettable"], "steps_without_removal": 4 * SPE,
                                       "steps_saved": 2 * (SPE - KEPT_SPE)}


def test_lr_follows_epochs_not_steps_after_removal(tmp_path, tiny_config):
    """The lr of the first step of each epoch is the same with and without removal (MEST: epochs shrink)."""
    plain_config = _forgetting_config(copy.deepcopy(tiny_config))
    plain_config["forgetting"] = {"remove_n": None}
    plain = Trainer(plain_config, tmp_path / "plain")
    plain.fit()
    removing = Trainer(_forgetting_config(tiny_config), tmp_path / "removing")
    removing.fit()
    assert removing.schedule == plain.schedule == LRSchedule.from_config(
        plain.config["schedule"], total_steps=4 * SPE, steps_per_epoch=SPE)
    lr_plain = {r["step"]: r["lr"] for r in _records(tmp_path / "plain", "train")}
    lr_removing = {r["step"]: r["lr"] for r in _records(tmp_path / "removing", "train")}
    for epoch in range(4):  # the record at step s holds the lr of step index s - 1
        first = epoch * SPE if epoch <= 2 else 2 * SPE + (epoch - 2) * KEPT_SPE
        assert lr_removing[first + 1] == lr_plain[epoch * SPE + 1]
    assert lr_removing[30] == lr_plain[30]  # identical before the removal
    assert lr_removing[2 * SPE + 2] != lr_plain[2 * SPE + 2]


@pytest.mark.parametrize("sets, message", [
    (["forgetting.remove_at=0.1"], r"forgetting.remove_at=0.1 with train.epochs=4.0 puts the removal at epoch .* = 0"),
    (["forgetting.remove_at=0.9"], r"forgetting.remove_at=0.9 .* = 4; it must be in \[1, train.epochs\)"),
    (["forgetting.remove_n=0"], "forgetting.remove_n must be an integer in \\[1, inf\\) or null; got 0"),
    (["forgetting.mode=unforgettable"], "unknown key 'forgetting.mode'"),
])
def test_config_errors_come_before_any_data_is_read(sets, message):
    with pytest.raises(ConfigError, match=message):
        resolve(None, ["train.epochs=4", "forgetting.remove_n=10", *sets])


def test_remove_n_must_leave_examples(tmp_path, tiny_config):
    config = _forgetting_config(tiny_config)
    config["forgetting"].update(remove_n=1400, keep_lowest_n=38)
    with pytest.raises(ConfigError, match="forgetting.remove_n \\+ forgetting.keep_lowest_n must be below the "
                                          "training-set size 1438; got 1400 \\+ 38"):
        Trainer(config, tmp_path / "run").build()
