"""The training loop: one plain loop any user could have written.

forward → loss → backward → ``optimizer.step()`` → ``method.step()`` (topology update when due) →
metrics / evaluation / checkpoint. Everything a resumed run needs is in the checkpoint, so a run that
is killed and resumed ends bit-identical (on CPU) to one that was never stopped. With ``forgetting.remove_n``
set, each step also records which examples the model got right, and once (at the start of epoch e_r) the
least-forgotten examples leave the training set (methods/mest.md §2.7).
"""
from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F

from ..data import ForgettingTracker
from ..errors import ConfigError
from ..nn import SparseModule
from ..rng import derive_seed
from . import checkpoint as ckpt
from .build import build_datasets, build_loader, build_method, build_network, resolve_device
from .config import dump_yaml, load_yaml, validate
from .evaluate import evaluate
from .metrics import MetricsLog, memory_record
from .optim import build_optimizer
from .removal import RemovalPlan, removal_epoch
from .schedule import LRSchedule

Callback = Callable[["Trainer"], None]
_SCORE_TAG = 0x5C0E  # seed of the scoring loader: derive_seed(seed, _SCORE_TAG)


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _weight_layers(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(active, total) weights of every weight layer: sparse ones, and Linear/Conv2d left dense (e.g. ER-saturated)."""
    counts = {}
    for name, m in model.named_modules():
        if isinstance(m, SparseModule):
            counts[name] = (m.nnz, math.prod(m.weight_shape))
        elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            counts[name] = (m.weight.numel(), m.weight.numel())
    return counts


def layer_densities(model: torch.nn.Module) -> dict[str, float]:
    return {name: active / total for name, (active, total) in _weight_layers(model).items()}


def sparsity_totals(model: torch.nn.Module) -> tuple[int, int]:
    """(active, total) weights over all weight layers: the quantity the sparsity budget is set on."""
    counts = _weight_layers(model).values()
    return sum(a for a, _ in counts), sum(t for _, t in counts)


class _Meter:
    """Running sums between two log records (checkpointed, so resumed averages match)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.correct, self.count, self.steps, self.seconds = 0.0, 0, 0, 0, 0.0

    def state_dict(self) -> dict:
        return dict(loss=self.loss, correct=self.correct, count=self.count, steps=self.steps, seconds=self.seconds)

    def load_state_dict(self, state: Mapping) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class Trainer:
    """Builds everything from a validated config and trains; ``fit()`` returns the summary dict.

    ``callbacks`` run after every step (after any checkpoint of that step) with the trainer as argument.
    """

    def __init__(self, config: Mapping, run_dir: str | Path | None = None, *, resume: bool = False,
                 device: str | None = None, progress: bool | None = None, callbacks: Iterable[Callback] = ()):
        self.config = validate(config)
        if device is not None:
            self.config["device"] = device
        if progress is not None:
            self.config["train"]["progress"] = progress
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(self.config["name"])
        self.callbacks = list(callbacks)
        self.device = resolve_device(self.config["device"])
        self._resume = resume
        self._built = False

    @classmethod
    def resume(cls, run_dir: str | Path, *, device: str | None = None, progress: bool | None = None,
               callbacks: Iterable[Callback] = ()) -> "Trainer":
        """Continue a run from the newest good checkpoint in ``run_dir`` with its saved config."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {str(run_dir)!r}: not a run folder (no config.yaml in it)")
        return cls(load_yaml(run_dir / "config.yaml"), run_dir, resume=True, device=device, progress=progress,
                   callbacks=callbacks)

    # --- set-up ---------------------------------------------------------------------------------------
    def build(self) -> None:
        cfg, train_cfg = self.config, self.config["train"]
        self.train_set, self.test_set = build_datasets(cfg)
        forgetting = cfg["forgetting"]["remove_n"] is not None
        self.loader = build_loader(self.train_set, cfg, train=True, device=self.device, with_indices=forgetting)
        self.test_loader = build_loader(self.test_set, cfg, train=False, device=self.device)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"data.batch_size={cfg['data']['batch_size']} with drop_last leaves no batch for "
                              f"{len(self.train_set)} training samples")
        self.tracker: ForgettingTracker | None = None
        self.removal_plan: RemovalPlan | None = None
        if forgetting:
            self.removal_plan = self._plan_removal()
            self.tracker = ForgettingTracker(len(self.train_set))
            total = self.removal_plan.total_steps(train_cfg["epochs"])
        else:
            total = int(math.ceil(train_cfg["epochs"] * self.steps_per_epoch))
        if train_cfg["max_steps"] is not None:
            total = min(total, train_cfg["max_steps"])
        self.total_steps = max(1, total)
        self.model = build_network(cfg, self.train_set, self.device)
        self.optimizer = build_optimizer(self.model, cfg["optim"])
        self.method = build_method(cfg, self.model, self.optimizer, self.total_steps, self.steps_per_epoch)
        # Methods that score growth on extra fresh batches (score_batches > 0) draw them from a second
        # loader with its own seed, so the training batches stay the same; its position is checkpointed.
        self.score_loader = None
        if self.method is not None and getattr(self.method, "score_batches", 0) > 0:
            self.score_loader = build_loader(self.train_set, {**cfg, "seed": derive_seed(cfg["seed"], _SCORE_TAG)},
                                             train=True, device=self.device)
        self._score_iter = None
        self.schedule = LRSchedule.from_config(cfg["schedule"], total_steps=self.virtual_step(self.total_steps),
                                               steps_per_epoch=self.steps_per_epoch)
        eval_every = train_cfg["eval_every_epochs"]
        self.eval_every_steps = max(1, round(eval_every * self.steps_per_epoch)) if eval_every > 0 else 0
        self.step = 0
        self.meter = _Meter()
        self.progress_state = {"topology_updates": 0, "elapsed_seconds": 0.0, "best_accuracy": None,
                               "last_eval": None, "data_removal": None}
        self._built = True

    def _plan_removal(self) -> RemovalPlan:
        """Where the removal falls and how many batches a kept epoch has (assuming remove_n go)."""
        fg, n = self.config["forgetting"], len(self.train_set)
        if fg["remove_n"] + fg["keep_lowest_n"] >= n:
            raise ConfigError(f"forgetting.remove_n + forgetting.keep_lowest_n must be below the training-set size "
                              f"{n}; got {fg['remove_n']} + {fg['keep_lowest_n']}")
        kept = self.loader.batches_per_epoch(n - fg["remove_n"])
        if kept == 0:
            raise ConfigError(f"forgetting.remove_n={fg['remove_n']} leaves {n - fg['remove_n']} examples: no batch "
                              f"of data.batch_size={self.config['data']['batch_size']} with drop_last")
        return RemovalPlan(epoch=removal_epoch(self.config), steps_per_epoch=self.steps_per_epoch,
                           kept_steps_per_epoch=kept)

    def virtual_step(self, step: int) -> int | float:
        """``step`` in pre-removal step units (itself without removal): what the LR schedule and epochs count."""
        return step if self.removal_plan is None else self.removal_plan.virtual(step)

    def epoch_of(self, step: int) -> float:
        """Training epochs done after ``step`` steps (a kept epoch after a removal counts as one)."""
        return self.virtual_step(step) / self.steps_per_epoch

    def _restore(self) -> Path:
        path, state = ckpt.latest_checkpoint(self.run_dir, map_location=self.device)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])  # after the model: sizes may have changed
            if self.method is not None:
                if state["method"] is None:
                    raise ckpt.CheckpointError(f"checkpoint {str(path)!r} has no method state but the run "
                                               f"uses method {self.config['method']['name']!r}")
                self.method.load_state_dict(state["method"])
            self.loader.load_state_dict(state["loader"])
            if self.tracker is not None:
                if state.get("forgetting") is None:
                    raise ckpt.CheckpointError(f"checkpoint {str(path)!r} has no forgetting statistics but the "
                                               f"run sets forgetting.remove_n")
                self.tracker.load_state_dict(state["forgetting"])
            if self.score_loader is not None:
                self.score_loader.load_state_dict(state["score_loader"])
        except (RuntimeError, KeyError, ValueError) as exc:
            if isinstance(exc, ckpt.CheckpointError):
                raise
            raise ckpt.CheckpointError(f"checkpoint {str(path)!r} does not match this run's config: {exc}") from None
        self.step = int(state["step"])
        self.meter.load_state_dict(state["meter"])
        self.progress_state.update(state["progress"])
        ckpt.set_rng_state(state["rng"])
        return path

    # --- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> dict:
        from tqdm.auto import tqdm

        from .summary import finish_summary

        if not self._built:
            self.build()
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed_from = None
        if self._resume:
            resumed_from = self._restore()
            print(f"resuming {self.run_dir} from {resumed_from.name} (step {self.step}/{self.total_steps})",
                  file=sys.stderr)
        else:
            if ckpt.list_checkpoints(self.run_dir):
                raise ConfigError(f"output folder {str(self.run_dir)!r} already holds checkpoints; resume it with "
                                  f"--resume or choose another --out")
            torch.manual_seed(cfg["seed"])
        (self.run_dir / "config.yaml").write_text(dump_yaml(cfg))
        log = MetricsLog(self.run_dir, tensorboard=cfg["train"]["tensorboard"],
                         resume_step=self.step if resumed_from else None)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not cfg["train"]["progress"],
                   dynamic_ncols=True, desc=cfg["name"], unit="step", file=sys.stderr)
        start = time.perf_counter() - self.progress_state["elapsed_seconds"]
        try:
            if self.step == 0:
                log.write(self._train_record(record_kind="init"))
            while self.step < self.total_steps:
                for x, y, *indices in self.loader:
                    self._train_step(x, y, log, indices[0] if indices else None)
                    if self.removal_plan is not None and self.step == self.removal_plan.step \
                            and self.progress_state["data_removal"] is None:
                        self._remove_examples(log)
                    self.progress_state["elapsed_seconds"] = time.perf_counter() - start
                    bar.update(1)
                    if self.step % cfg["train"]["log_every"] == 0 or self.step == self.total_steps:
                        record = self._train_record()
                        log.write(record)
                        bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}",
                                        lr=f"{record['lr']:.2e}", refresh=False)
                        self.meter.reset()
                    if self._eval_due() or self.step == self.total_steps:
                        log.write(self._eval_record())
                    every = cfg["train"]["checkpoint_every"]
                    if (every and self.step % every == 0) or self.step == self.total_steps:
                        self.save_checkpoint()
                    for callback in self.callbacks:
                        callback(self)
                    if self.step >= self.total_steps:
                        break
        finally:
            bar.close()
            log.close()
        return finish_summary(self)

    def _eval_due(self) -> bool:
        """Every eval_every_epochs: a multiple of eval_every_steps in pre-removal units was reached by this step."""
        every = self.eval_every_steps
        if not every:
            return False
        if self.removal_plan is None or self.step <= self.removal_plan.step:
            return self.step % every == 0
        return math.floor(self.virtual_step(self.step) / every) > math.floor(self.virtual_step(self.step - 1) / every)

    def _remove_examples(self, log: MetricsLog) -> None:
        """Drop the examples the forgetting statistics select, reset the statistics, log and save the order."""
        assert self.tracker is not None and self.removal_plan is not None
        fg, n = self.config["forgetting"], len(self.train_set)
        counts, stats = self.tracker.counts(), self.tracker.stats()
        removed = self.tracker.removal(fg["remove_n"], fg["keep_lowest_n"])
        in_order = removed[torch.sort(counts[removed], stable=True).indices]  # by (F, index), as chosen
        self.loader.remove(removed)
        self.tracker.reset()
        info = {"step": self.step, "epoch": self.removal_plan.epoch, "requested": fg["remove_n"],
                "keep_lowest_n": fg["keep_lowest_n"], "removed": int(removed.numel()),
                "remaining": n - int(removed.numel()), "unforgettable": stats["unforgettable"],
                "never_learned": stats["never_learned"], "forgetting_events": stats["forgetting_events"]}
        self.progress_state["data_removal"] = dict(info)
        log.write({"kind": "data", **info})
        order = {**info, "indices": in_order.tolist(), "forgetting_counts": counts[in_order].tolist()}
        (self.run_dir / "forgetting.json").write_text(json.dumps(order) + "\n")
        if removed.numel() < fg["remove_n"]:
            print(f"warning: forgetting removed only {removed.numel()} of forgetting.remove_n={fg['remove_n']} "
                  f"examples: the others were never learned (they are never removed); the run keeps its "
                  f"planned {self.total_steps} steps", file=sys.stderr)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, log: MetricsLog,
                    indices: torch.Tensor | None = None) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        lr = cfg["optim"]["lr"] * self.schedule.factor(self.virtual_step(self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.model.train()
        logits, loss = self._forward(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        stats = None
        if self.method is not None:
            stats = self.method.step(self._score_batch if self.score_loader is not None else None)
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value} at step {self.step}; "
                                     f"lower optim.lr (now {cfg['optim']['lr']}) or check the data")
        correct = logits.detach().argmax(dim=1) == y
        if self.tracker is not None and indices is not None:
            self.tracker.record(indices, correct)
        m = self.meter
        m.loss += loss_value * y.numel()
        m.correct += int(correct.sum())
        m.count += y.numel()
        m.steps += 1
        m.seconds += seconds
        self._last_lr = lr
        if stats is not None:
            self.progress_state["topology_updates"] += 1
            active, total = sparsity_totals(self.model)
            log.write({"kind": "update", "step": self.step, "epoch": self.epoch_of(self.step),
                       "active_weights": active, "sparsity": 1 - active / total, "stats": stats,
                       "layer_density": layer_densities(self.model), "update_seconds": seconds})

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.config["train"]["bf16"]):
            logits = self.model(x)
        return logits, F.cross_entropy(logits.float(), y, label_smoothing=self.config["train"]["label_smoothing"])

    def _score_batch(self) -> None:
        """Forward + backward on the next scoring batch (no optimizer step): the method's score closure."""
        assert self.score_loader is not None
        batch = next(self._score_iter, None) if self._score_iter is not None else None
        if batch is None:
            self._score_iter = iter(self.score_loader)
            batch = next(self._score_iter)
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        self._forward(x, y)[1].backward()

    def _train_record(self, record_kind: str = "train") -> dict:
        m = self.meter
        active, total = sparsity_totals(self.model)
        record = {"kind": record_kind, "step": self.step, "epoch": self.epoch_of(self.step),
                  "lr": self.config["optim"]["lr"] * self.schedule.factor(self.virtual_step(max(0, self.step - 1))),
                  "active_weights": active, "sparsity": (1 - active / total) if total else 0.0,
                  "topology_updates": self.progress_state["topology_updates"], **memory_record(self.device)}
        if m.count:
            record.update(loss=m.loss / m.count, accuracy=m.correct / m.count, step_seconds=m.seconds / m.steps)
        if record_kind == "init":
            record["layer_density"] = layer_densities(self.model)
        return record

    def _eval_record(self) -> dict:
        t0 = time.perf_counter()
        result = evaluate(self.model, self.test_loader, self.device, bf16=self.config["train"]["bf16"])
        best = self.progress_state["best_accuracy"]
        self.progress_state["best_accuracy"] = result["accuracy"] if best is None else max(best, result["accuracy"])
        self.progress_state["last_eval"] = {"loss": result["loss"], "accuracy": result["accuracy"]}
        return {"kind": "eval", "step": self.step, "epoch": self.epoch_of(self.step),
                "loss": result["loss"], "accuracy": result["accuracy"], "samples": result["samples"],
                "eval_seconds": time.perf_counter() - t0, "layer_density": layer_densities(self.model)}

    def save_checkpoint(self) -> Path:
        return ckpt.save_checkpoint(self.run_dir, self.step, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict() if self.method is not None else None,
            "loader": self.loader.state_dict(),
            "score_loader": self.score_loader.state_dict() if self.score_loader is not None else None,
            "forgetting": self.tracker.state_dict() if self.tracker is not None else None,
            "schedule": {"step": self.step},
            "meter": self.meter.state_dict(),
            "progress": dict(self.progress_state),
        }, keep=self.config["train"]["keep_checkpoints"])


def train(config: Mapping, run_dir: str | Path | None = None, **kwargs) -> dict:
    """Train a run from a config (library entry point); returns the summary dict."""
    return Trainer(config, run_dir, **kwargs).fit()
