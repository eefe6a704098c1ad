"""scikit-learn's 8×8 handwritten digits (1797 samples, 64 features, 10 classes), shipped with sklearn."""
from __future__ import annotations

import torch

from .. import rng
from .checks import fraction
from .dataset import ArrayDataset

_SPLIT_TAG = 0xD1C175  # keeps the split generator apart from other users of rng.generator(seed, ...)


def split_indices(n: int, seed: int, test_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) sample indices: a permutation seeded by ``seed``, the first round(n·test_fraction) for test."""
    perm = torch.randperm(n, generator=rng.generator(_SPLIT_TAG, seed))
    n_test = int(round(n * test_fraction))
    return perm[n_test:], perm[:n_test]


def load_digits(*, train: bool, seed: int, test_fraction: float = 0.2) -> ArrayDataset:
    """Pixels scaled to [0, 1], split by a permutation seeded by ``seed``, standardised with train statistics.

    The split and the statistics depend only on (seed, test_fraction), so the train and test sets of one
    seed are disjoint and use the same standardisation.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    test_fraction = fraction(test_fraction, "test_fraction")
    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float64) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = split_indices(len(y), seed, test_fraction)
    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant border pixels stay 0 after centring
    idx = train_idx if train else test_idx
    return ArrayDataset(((x[idx] - mean) / std).to(torch.float32), y[idx], 10, name="digits")
