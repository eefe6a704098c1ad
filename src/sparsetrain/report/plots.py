"""PNG plots of one or more runs (matplotlib, Agg backend): curves, per-layer density, topology turnover."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from .runs import Run  # noqa: E402


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_curves(runs: list[Run], path: Path) -> Path:
    """Training loss (log scale) and train/test accuracy against epochs."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run, color in zip(runs, _colors(len(runs))):
        train = [r for r in run.of_kind("train") if "loss" in r]
        evals = run.of_kind("eval")
        if train:
            ax_loss.plot([r["epoch"] for r in train], [r["loss"] for r in train], color=color, label=f"{run.label} train")
            ax_acc.plot([r["epoch"] for r in train], [100 * r["accuracy"] for r in train], color=color, alpha=0.45,
                        linestyle="--", label=f"{run.label} train")
        if evals:
            ax_loss.plot([r["epoch"] for r in evals], [r["loss"] for r in evals], color=color, marker="o",
                         markersize=3, linestyle=":", label=f"{run.label} test")
            ax_acc.plot([r["epoch"] for r in evals], [100 * r["accuracy"] for r in evals], color=color, marker="o",
                        markersize=3, label=f"{run.label} test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss (train: mean over log interval)")
    ax_loss.set_yscale("log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy (dashed: train, solid: test)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def final_layer_density(run: Run) -> dict[str, float]:
    """The newest per-layer density found in the metrics (eval, update or init records)."""
    for record in reversed(run.records):
        if "layer_density" in record:
            return record["layer_density"]
    return {}


def plot_density(runs: list[Run], path: Path) -> Path:
    """Final density (active / total weights) of every sparse layer, one bar per run."""
    densities = [final_layer_density(r) for r in runs]
    layers: list[str] = []
    for d in densities:
        layers += [name for name in d if name not in layers]
    fig_w = min(24.0, max(7.0, 0.32 * len(layers) * max(1, len(runs)) + 2))
    fig, ax = plt.subplots(figsize=(fig_w, 4.8))
    if not layers:
        ax.text(0.5, 0.5, "no sparse layers (dense runs)", ha="center", va="center", transform=ax.transAxes)
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(layers))
    for i, (run, d, color) in enumerate(zip(runs, densities, _colors(len(runs)))):
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, [100 * d.get(n, np.nan) for n in layers], width,
               color=color, label=run.label)
    ax.set_xticks(x, layers, rotation=60 if len(layers) > 6 else 0, ha="right" if len(layers) > 6 else "center",
                  fontsize=8)
    ax.set(ylabel="density (% of weights active)", title="Per-layer density at the end of training")
    if layers and max(max(d.values(), default=1) for d in densities) / max(1e-9, min(
            min(d.values(), default=1) for d in densities)) > 50:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def update_turnover(record: dict) -> float | None:
    """Fraction of the active weights replaced by one topology update (the method's ``turnover`` statistic)."""
    value = (record.get("stats") or {}).get("turnover")
    return None if value is None else float(value)


def plot_turnover(runs: list[Run], path: Path) -> Path:
    """Topology turnover per update over training, and its running total."""
    fig, (ax, ax_cum) = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = 0
    for run, color in zip(runs, _colors(len(runs))):
        points = [(r["epoch"], t) for r in run.of_kind("update") if (t := update_turnover(r)) is not None]
        if not points:
            continue
        drawn += 1
        epochs, turnover = zip(*points)
        ax.plot(epochs, [100 * t for t in turnover], color=color, marker=".", label=run.label)
        ax_cum.plot(epochs, 100 * np.cumsum(turnover), color=color, label=run.label)
    ax.set(xlabel="epoch", ylabel="weights replaced (% of active)", title="Topology turnover per update")
    ax_cum.set(xlabel="epoch", ylabel="cumulative replaced (% of active)", title="Cumulative turnover")
    for a in (ax, ax_cum):
        a.grid(alpha=0.3)
        if drawn:
            a.legend(fontsize=8)
        else:
            a.text(0.5, 0.5, "no topology updates in these runs", ha="center", va="center", transform=a.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
