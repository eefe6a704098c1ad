"""``build_model(name, ...)``: every architecture by name, with option checking."""
from __future__ import annotations

import functools
import inspect
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, check_choice
from .mlp import build_mlp
from .resnet import build_resnet
from .resnet_cifar import build_cifar_resnet
from .vgg import build_vgg
from .vit import build_vit

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": build_mlp,
    "resnet20": functools.partial(build_cifar_resnet, 20),
    "resnet32": functools.partial(build_cifar_resnet, 32),
    "resnet56": functools.partial(build_cifar_resnet, 56),
    "resnet18": functools.partial(build_resnet, "resnet18"),
    "resnet50": functools.partial(build_resnet, "resnet50"),
    "vgg16_small": functools.partial(build_vgg, "vgg16_small"),
    "vgg16": functools.partial(build_vgg, "vgg16"),
    "vgg19": functools.partial(build_vgg, "vgg19"),
    "vit": build_vit,
}
MODELS = tuple(_BUILDERS)
_COMMON = ("num_classes", "input_shape", "width", "seed")


def model_options(name: str) -> dict[str, Any]:
    """The extra options model ``name`` accepts, with their defaults."""
    check_choice(name, "model", MODELS)
    params = inspect.signature(_BUILDERS[name]).parameters
    return {p.name: p.default for p in params.values() if p.kind is p.KEYWORD_ONLY and p.name not in _COMMON}


def build_model(name: str, *, num_classes: int, input_shape: Sequence[int], width: float = 1.0,
                seed: int | None = None, **options: Any) -> nn.Module:
    """A freshly initialised dense model (plain nn.Linear / nn.Conv2d, ready for ``sparsify``).

    ``width`` multiplies every hidden width and channel count (rounded, at least 1); input and output
    sizes stay. With ``seed`` the initial values come from ``torch.manual_seed(seed)`` inside a forked
    RNG (the caller's global RNG state is left as it was); without it, from the global torch RNG.
    """
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for model {name!r}; allowed options: "
                          f"{', '.join(sorted(allowed)) or 'none'}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ConfigError(f"width must be a positive number, got {width!r}")
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"seed must be an int or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        return _BUILDERS[name](num_classes=num_classes, input_shape=input_shape, width=float(width), **options)
