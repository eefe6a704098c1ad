"""Evaluation: mean loss and accuracy of a model over a loader."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, bf16: bool = False) -> dict[str, float]:
    """Sample-weighted mean cross-entropy and top-1 accuracy (model left in the mode it had)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": float(loss_sum) / count, "accuracy": int(correct) / count, "samples": count}


def evaluate_run(run_dir, *, device: str | None = None, checkpoint=None, batch_size: int | None = None) -> dict:
    """Rebuild a run's model from RUN_DIR/config.yaml, load its newest good (or the given) checkpoint and
    evaluate it on the test split. Returns {'accuracy', 'loss', 'samples', 'step', 'checkpoint', 'account'}."""
    from pathlib import Path

    from ..accounting import account
    from ..errors import ConfigError
    from .build import build_datasets, build_loader, build_network, resolve_device
    from .checkpoint import latest_checkpoint, load_checkpoint
    from .config import load_yaml, validate

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"run folder {str(run_dir)!r} has no config.yaml (is it a sparsetrain run folder?)")
    config = validate(load_yaml(run_dir / "config.yaml"))
    if batch_size is not None:
        config["data"]["eval_batch_size"] = int(batch_size)
    dev = resolve_device(device or config["device"])
    if checkpoint is None:
        path, state = latest_checkpoint(run_dir, map_location=dev)
    else:
        path, state = Path(checkpoint), load_checkpoint(checkpoint, map_location=dev)
    _, test_set = build_datasets(config, test_only=True)
    model = build_network(config, test_set, dev)
    model.load_state_dict(state["model"])
    loader = build_loader(test_set, config, train=False, device=dev)
    result = evaluate(model, loader, dev, bf16=config["train"]["bf16"])
    result.update(step=int(state["step"]), checkpoint=str(path),
                  account=account(model, tuple(test_set.input_shape)))
    return result
