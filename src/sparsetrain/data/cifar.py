"""CIFAR-10 / CIFAR-100 from the official "python version" pickle batches in a directory the user names.

Security: ``pickle.load`` can run code from the file, so sparsetrain only unpickles files under the
``root`` the user points at (the official archives from https://www.cs.toronto.edu/~kriz/cifar.html) and
never downloads anything.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset
from .transforms import Compose, RandomCrop, RandomHorizontalFlip


@dataclass(frozen=True)
class CifarSpec:
    title: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Per-channel statistics of the training images (pixels in [0, 1]), the values commonly used with CIFAR.
CIFAR = {
    "cifar10": CifarSpec("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                         tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels", 10,
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": CifarSpec("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
                          b"fine_labels", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def find_folder(spec: CifarSpec, root: str | os.PathLike | None) -> Path:
    """``root`` itself when it holds the batch files, else ``root/<official folder name>``."""
    files = spec.train_files + spec.test_files
    expected = (f"{spec.title} not found: expected the files {', '.join(files)} in {{where}} (or directly in that "
                f"root). Download {spec.archive} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
                f"yourself; sparsetrain never downloads data.")
    if root is None:
        raise FileNotFoundError(expected.format(where=f"<root>/{spec.folder}/ — pass root=<directory>"))
    root = Path(root).expanduser()
    for folder in (root, root / spec.folder):
        if all((folder / name).is_file() for name in files):
            return folder
    missing = [name for name in files if not (root / spec.folder / name).is_file()]
    raise FileNotFoundError(expected.format(where=f"{root / spec.folder}/") + f" Missing there: {', '.join(missing)}.")


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")  # official format; only from the user's own directory
    if not isinstance(entry, dict) or b"data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{path} is not a CIFAR batch: expected a dict with b'data' and {label_key!r}, got {keys}")
    data = np.asarray(entry[b"data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: b'data' must be (N, 3072) with N labels, got {data.shape} and {len(labels)} labels")
    return data, labels


def load_cifar(name: str, *, root: str | os.PathLike | None, train: bool, augment: bool | None = None) -> ArrayDataset:
    """Images as normalised float32 (N, 3, 32, 32); ``augment`` (default: on for train) adds the standard
    random 4-pixel-padded crop and horizontal flip, applied per batch by the loader."""
    spec = CIFAR[name]
    folder = find_folder(spec, root)
    parts = [_read_batch(folder / f, spec.label_key) for f in (spec.train_files if train else spec.test_files)]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(data).to(torch.float32).div_(255.0) - mean) / std
    augment = train if augment is None else bool(augment)
    transform = None
    if augment:
        black = tuple((-m / s) for m, s in zip(spec.mean, spec.std))  # a zero pixel after normalisation
        transform = Compose(RandomCrop(32, padding=4, fill=black), RandomHorizontalFlip())
    return ArrayDataset(x.contiguous(), torch.from_numpy(labels), spec.num_classes, name=name, augment=transform)
