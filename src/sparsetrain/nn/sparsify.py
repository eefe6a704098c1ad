"""``sparsify(model, ...)``: swap nn.Linear / nn.Conv2d for sparse modules with per-layer budgets."""
from __future__ import annotations

import fnmatch
import math
from typing import Iterable, Mapping

from torch import nn

from .. import rng
from ..density import DISTRIBUTIONS, active_count, layer_densities, match_override
from ..errors import ConfigError, check_choice, check_sparsity
from ..layout import LAYOUTS
from .conv import MaskedConv2d, SparseConv2d
from .diagonal import DiagonalLinear
from .linear import MaskedLinear, SparseLinear

_TARGETS = (nn.Linear, nn.Conv2d)


def sparse_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name → sparse module, in module order (the root itself is named '')."""
    from .base import SparseModule
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseModule)}


def _excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _replacement(module: nn.Module, layout: str, nnz: int, generator, dense_grad: bool) -> nn.Module:
    device, dtype = module.weight.device, module.weight.dtype
    bias = module.bias is not None
    if layout == "diagonal":  # nn.Linear only (checked by sparsify)
        out_features, in_features = module.weight.shape
        return DiagonalLinear(in_features, out_features, sparsity=1.0 - nnz / (out_features * in_features), bias=bias,
                              generator=generator, device=device, dtype=dtype)
    if isinstance(module, nn.Linear):
        cls = SparseLinear if layout == "compressed" else MaskedLinear
        extra = {} if layout == "compressed" else {"dense_grad": dense_grad}
        return cls(module.in_features, module.out_features, nnz=nnz, bias=bias, generator=generator,
                   device=device, dtype=dtype, **extra)
    kwargs = SparseConv2d._conv_kwargs(module)
    cls = SparseConv2d if layout == "compressed" else MaskedConv2d
    extra = {} if layout == "compressed" else {"dense_grad": dense_grad}
    return cls(bias=bias, nnz=nnz, generator=generator, device=device, dtype=dtype, **kwargs, **extra)


def sparsify(model: nn.Module, sparsity: float, *, distribution: str = "erk", layout: str = "compressed",
             exclude: Iterable[str] = (), overrides: Mapping[str, float] | None = None, seed: int = 0,
             erk_power: float = 1.0, redistribute: bool = True, dense_grad: bool = False) -> nn.Module:
    """Replace every nn.Linear and nn.Conv2d of ``model`` by a sparse module, in place.

    ``sparsity`` is the fraction of zeros over all sparsified layers together; ``distribution``
    (uniform / er / erk) splits it across layers; ``exclude`` (names or globs) stay dense and outside
    the budget; ``overrides`` maps names or globs to a fixed per-layer sparsity. A layer that ER/ERK makes
    fully dense stays an ordinary dense module (it counts toward the budget as dense). Topology and values
    draw from generators seeded by (seed, layer index). Returns ``model`` (or, when ``model`` is itself a
    Linear/Conv2d, its replacement).
    """
    check_sparsity(sparsity)
    check_choice(distribution, "distribution", DISTRIBUTIONS)
    check_choice(layout, "layout", LAYOUTS)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    candidates = {name: m for name, m in model.named_modules() if type(m) in _TARGETS}
    unknown = [p for p in exclude if not any(_excluded(n, [p]) for n in candidates)]
    if unknown:
        raise ConfigError(f"exclude names no nn.Linear/nn.Conv2d layer: {unknown}; layers are {sorted(candidates)}")
    targets = {n: m for n, m in candidates.items() if not _excluded(n, exclude)}
    if not targets:
        raise ConfigError("sparsify found no nn.Linear or nn.Conv2d layer to sparsify")
    for name, m in targets.items():
        if isinstance(m, nn.Conv2d) and layout == "diagonal":
            raise ConfigError(f"layer {name!r} is a Conv2d; layout='diagonal' (DynaDiag) supports nn.Linear only: add "
                              "it to exclude")
        if isinstance(m, nn.Conv2d) and layout == "compressed" and m.groups != 1:
            raise ConfigError(f"layer {name!r} is a conv with groups={m.groups}; layout='compressed' supports "
                              f"groups=1 only: add it to exclude or use layout='masked'")
    densities = layer_densities({n: tuple(m.weight.shape) for n, m in targets.items()}, sparsity, distribution,
                                overrides=overrides, erk_power=erk_power, redistribute=redistribute)
    replacements = {}
    for index, (name, module) in enumerate(targets.items()):
        if densities[name] >= 1.0 and distribution != "uniform" and match_override(name, overrides or {}) is None:
            continue  # saturated by ER/ERK: an ordinary dense layer (compressed storage of a full matrix costs 5x)
        nnz = active_count(densities[name], math.prod(module.weight.shape))
        replacements[name] = _replacement(module, layout, nnz, rng.generator(seed, index), dense_grad)
    if "" in replacements:
        return replacements[""]
    for name, new in replacements.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model
