"""Methods by name: ``create``, ``available``, ``hyperparameters`` and the ``register`` decorator."""
from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import ConfigError
from .base import Method

_REGISTRY: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator: make a Method subclass available under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise ConfigError(f"method must be one of {', '.join(map(repr, available()))}; got {name!r}")
    return _REGISTRY[name]


def hyperparameters(name: str) -> dict[str, Any]:
    """Every hyperparameter ``name`` accepts, with its library default (a copy)."""
    return dict(method_class(name).parameters)


def create(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, *, total_steps: int, seed: int = 0,
           **hyperparameters: Any) -> Method:
    """The method ``name`` bound to the sparse layers of ``model`` and to ``optimizer``."""
    return method_class(name)(model, optimizer, total_steps=total_steps, seed=seed, **hyperparameters)
