"""``load_dataset(name, ...)``: one entry point for every data set, with option checking."""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable

from ..errors import ConfigError, check_choice
from .cifar import load_cifar
from .dataset import ArrayDataset
from .digits import load_digits
from .imagenet import ImageFolderDataset, load_imagenet
from .mnist1d import load_mnist1d
from .teacher import load_teacher

_LOADERS: dict[str, Callable[..., Any]] = {
    "digits": load_digits,
    "mnist1d": load_mnist1d,
    "cifar10": functools.partial(load_cifar, "cifar10"),
    "cifar100": functools.partial(load_cifar, "cifar100"),
    "imagenet": load_imagenet,
    "teacher": load_teacher,
}
DATASETS = tuple(_LOADERS)
_COMMON = ("root", "train", "seed")


def dataset_options(name: str) -> dict[str, Any]:
    """The extra options data set ``name`` accepts, with their defaults."""
    check_choice(name, "dataset", DATASETS)
    params = inspect.signature(_LOADERS[name]).parameters
    return {p.name: p.default for p in params.values() if p.kind is p.KEYWORD_ONLY and p.name not in _COMMON}


def load_dataset(name: str, *, root: str | os.PathLike | None = None, train: bool = True, seed: int = 0,
                 **options: Any) -> ArrayDataset | ImageFolderDataset:
    """The train (``train=True``) or test split of data set ``name``.

    ``root`` is the data directory for cifar10/cifar100/imagenet and the cache directory for mnist1d;
    digits and teacher are built in memory and ignore it. ``seed`` fixes what is random in the data set
    itself (digits split, mnist1d generation, teacher network and draws); data order and augmentation
    belong to :class:`~sparsetrain.data.SeededLoader`.
    """
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"unknown option(s) {unknown} for dataset {name!r}; allowed options: {listed}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    loader = _LOADERS[name]
    params = inspect.signature(loader).parameters
    common = {k: v for k, v in (("root", root), ("train", bool(train)), ("seed", seed)) if k in params}
    return loader(**common, **options)
