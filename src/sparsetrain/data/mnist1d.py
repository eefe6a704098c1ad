"""MNIST-1D (Greydanus 2020): 40-feature 1-D digit signals, generated offline and cached as .npz."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset

DEFAULT_CACHE = Path.home() / ".cache" / "sparsetrain"
_KEYS = ("x", "y", "x_test", "y_test")


def cache_path(seed: int, root: str | os.PathLike | None = None) -> Path:
    """Where the arrays generated for ``seed`` are cached: ``<root or ~/.cache/sparsetrain>/mnist1d-<seed>.npz``."""
    return Path(root if root is not None else DEFAULT_CACHE).expanduser() / f"mnist1d-{seed}.npz"


def _generate(seed: int) -> dict[str, np.ndarray]:
    """Run mnist1d's generator (5000 samples, 80/20 split) without touching the caller's global RNG state."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)  # seeds numpy/random globally: restored below
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64),
            "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64)}


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in _KEYS if k not in f.files]
        if missing:
            raise ValueError(f"cached MNIST-1D file {path} lacks arrays {missing}; delete it to regenerate")
        return {k: f[k] for k in _KEYS}


def load_mnist1d(*, root: str | os.PathLike | None, train: bool, seed: int) -> ArrayDataset:
    """4000 train / 1000 test samples of 40 features, 10 classes; generated once per seed, then read from cache.

    ``seed`` is the generator's seed (MNIST-1D's published arrays use 42). Nothing is downloaded.
    """
    path = cache_path(seed, root)
    if path.exists():
        arrays = _read(path)
    else:
        arrays = _generate(seed)
        _write_atomic(path, arrays)
    x, y = (arrays["x"], arrays["y"]) if train else (arrays["x_test"], arrays["y_test"])
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)), 10,
                        name="mnist1d")
