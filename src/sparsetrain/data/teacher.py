"""Synthetic teacher–student classification: a seeded random sparse MLP labels Gaussian inputs.

A known sparse function generated the labels, so a sparse student can in principle match it exactly;
useful to test whether a sparse-training method finds good connectivity. Needs no files.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import rng
from ..errors import ConfigError
from .checks import fraction, positive_int
from .dataset import ArrayDataset

_TAG = 0x7EAC4E2
_WEIGHTS, _CALIBRATION, _TRAIN, _TEST = range(4)
_CALIBRATION_SAMPLES = 4096


def teacher_layers(n_features: int, hidden: Sequence[int], n_classes: int, teacher_sparsity: float,
                   seed: int) -> list[torch.Tensor]:
    """The teacher's weight matrices (out, in), float64, each with exactly round(density·out·in) nonzeros
    (at least 1), scaled by 1/sqrt(active fan-in) so activations keep unit scale."""
    g = rng.generator(_TAG, seed, _WEIGHTS)
    sizes = [n_features, *hidden, n_classes]
    weights = []
    density = 1.0 - teacher_sparsity
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
        keep = max(1, round(density * n_out * n_in))
        mask = torch.zeros(n_out * n_in, dtype=torch.float64)
        mask[torch.randperm(n_out * n_in, generator=g)[:keep]] = 1.0
        weights.append(w * mask.view(n_out, n_in) / (density * n_in) ** 0.5)
    return weights


def _logits(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x.to(torch.float64)
    for i, w in enumerate(weights):
        h = h @ w.t()
        if i < len(weights) - 1:
            h = torch.relu(h)
    return h


def _class_offsets(logits: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """Per-class offsets that make argmax(logits - offsets) roughly uniform over the classes.

    Starts at the mean logit and raises the offset of classes that win too often (multiplicative-weights
    style steps on the log frequency), all on the fixed calibration draw, so the result is deterministic.
    """
    n, k = logits.shape
    offsets = logits.mean(0)
    step = 0.1 * float(logits.std())
    for _ in range(steps):
        freq = torch.bincount((logits - offsets).argmax(1), minlength=k).to(torch.float64) / n
        offsets = offsets + step * torch.log((freq + 0.5 / n) * k)
    return offsets


def _draw(n: int, n_features: int, seed: int, part: int) -> torch.Tensor:
    return torch.randn(n, n_features, generator=rng.generator(_TAG, seed, part), dtype=torch.float32)


def load_teacher(*, train: bool, seed: int, n_samples: int = 10000, n_test: int = 2000, n_features: int = 64,
                 n_classes: int = 10, hidden: int | Sequence[int] = 256, teacher_sparsity: float = 0.9) -> ArrayDataset:
    """``n_samples`` train or ``n_test`` test inputs x ~ N(0, I) (float32), label = argmax of the teacher's logits.

    Per-class logit offsets fitted on a fixed calibration draw keep the classes roughly balanced.
    Train, test and calibration inputs are independent draws from their own seeded generators.
    """
    n_samples, n_test = positive_int(n_samples, "n_samples"), positive_int(n_test, "n_test")
    n_features, n_classes = positive_int(n_features, "n_features"), positive_int(n_classes, "n_classes")
    if n_classes < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    hidden = tuple(positive_int(h, "hidden") for h in hidden)
    teacher_sparsity = fraction(teacher_sparsity, "teacher_sparsity", closed_low=True)
    weights = teacher_layers(n_features, hidden, n_classes, teacher_sparsity, seed)
    centre = _class_offsets(_logits(weights, _draw(_CALIBRATION_SAMPLES, n_features, seed, _CALIBRATION)))
    x = _draw(n_samples, n_features, seed, _TRAIN) if train else _draw(n_test, n_features, seed, _TEST)
    y = (_logits(weights, x) - centre).argmax(1)
    return ArrayDataset(x, y, n_classes, name="teacher")
