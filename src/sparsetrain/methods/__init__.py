"""Dynamic-sparse-training methods on one prune/grow engine.

Entry points: ``create(name, model, optimizer, *, total_steps, seed=0, **hyperparameters)``,
``available()``, ``hyperparameters(name)``. Call ``method.step()`` after every ``optimizer.step()``.
"""
from . import dynadiag, gse, mest, rigl, set_method, snfs, static  # noqa: F401  (registers the methods)
from .base import Layer, Method, Plan, PruneThenGrow
from .registry import available, create, hyperparameters, method_class, register

__all__ = ["create", "available", "hyperparameters", "method_class", "register", "Method", "PruneThenGrow",
           "Layer", "Plan"]
