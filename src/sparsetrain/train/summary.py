"""The end-of-run summary: summary.json and the table printed after training."""
from __future__ import annotations

import json
import platform
import sys
from typing import TYPE_CHECKING

import torch

from ..accounting import account, format_bytes
from .metrics import memory_record

if TYPE_CHECKING:
    from .engine import Trainer


def finish_summary(trainer: "Trainer") -> dict:
    """Account the final model, write RUN_DIR/summary.json and print the summary table to stdout."""
    from .. import __version__

    cfg = trainer.config
    acc = account(trainer.model, tuple(trainer.train_set.input_shape))
    t = acc.totals
    state = trainer.progress_state
    last = state["last_eval"] or {}
    summary = {
        "name": cfg["name"], "run_dir": str(trainer.run_dir),
        "method": cfg["method"]["name"], "model": cfg["model"]["name"], "dataset": cfg["data"]["name"],
        "target_sparsity": cfg["sparse"]["sparsity"] if cfg["method"]["name"] != "dense" else 0.0,
        "steps": trainer.step, "epochs": trainer.epoch_of(trainer.step),
        "test_accuracy": last.get("accuracy"), "test_loss": last.get("loss"),
        "best_test_accuracy": state["best_accuracy"],
        "topology_updates": state["topology_updates"],
        "time_seconds": state["elapsed_seconds"],
        "device": str(trainer.device),
        **memory_record(trainer.device),
        "versions": {"sparsetrain": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "account": acc.as_dict(),
        "data_removal": _data_removal(trainer),
    }
    (trainer.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "",
        acc.table(),
        "",
        _kv("run folder", str(trainer.run_dir)),
        _kv("test accuracy", _pct(summary["test_accuracy"]) + f"  (best {_pct(summary['best_test_accuracy'])})"),
        _kv("sparsity (weight layers)", f"{t['sparsity']:.2%} ({t['active']:,} active of {t['total']:,} weights)"),
        _kv("parameter memory", f"{format_bytes(t['value_bytes'])} values + {format_bytes(t['index_bytes'])} "
                                f"indices in sparse layers; all parameters {format_bytes(t['parameter_bytes'])} "
                                f"vs {format_bytes(t['dense_parameter_bytes'])} dense"),
        _kv("peak memory", f"{format_bytes(summary['peak_rss_bytes'])} resident (ru_maxrss)"
            + (f", {format_bytes(summary['cuda_peak_bytes'])} CUDA peak" if "cuda_peak_bytes" in summary else "")),
        _kv("time", f"{summary['time_seconds']:.1f} s for {trainer.step} steps "
                    f"({summary['epochs']:.1f} epochs) on {trainer.device}"),
        _kv("topology updates", str(summary["topology_updates"])),
    ]
    removal = summary["data_removal"]
    if removal is not None:
        lines.append(_kv("data removed", f"{removal['removed']:,} of {removal['removed'] + removal['remaining']:,} "
                                         f"examples at epoch {removal['epoch']} (forgetting statistics); "
                                         f"{trainer.step:,} steps vs {removal['steps_without_removal']:,} for the "
                                         f"same epochs without removal (saved {removal['steps_saved']:,})"))
    print("\n".join(lines), file=sys.stdout, flush=True)
    return summary


def _data_removal(trainer: "Trainer") -> dict | None:
    """What the forgetting removal did and the steps it saved (None when forgetting is off)."""
    plan = trainer.removal_plan
    if plan is None:
        return None
    done = trainer.progress_state.get("data_removal")
    without = plan.steps_without_removal(trainer.step) if done is not None else trainer.step
    n = len(trainer.train_set)
    return {"requested": trainer.config["forgetting"]["remove_n"], "epoch": plan.epoch,
            "removed": done["removed"] if done else 0, "remaining": done["remaining"] if done else n,
            "unforgettable": done["unforgettable"] if done else None,
            "steps_without_removal": without, "steps_saved": without - trainer.step}


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _kv(key: str, value: str) -> str:
    return f"{key:<26}{value}"
