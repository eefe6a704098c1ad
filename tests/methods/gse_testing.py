"""Shared helpers of the methods tests: tiny deterministic models, batches, optimizers and a train loop."""
from __future__ import annotations

import torch
from torch import nn

from sparsetrain import rng
from sparsetrain.nn import MaskedConv2d, MaskedLinear, SparseConv2d, SparseLinear

OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9, centered=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}

KINDS = ("linear", "conv", "masked_linear", "masked_conv")


def make_model(kind: str, seed: int = 0, *, dense_grad: bool = False) -> nn.Module:
    """Two sparse layers (so global scope has something to move between), all tiny."""
    g = rng.generator(seed, 12345)
    if kind == "linear":
        return nn.Sequential(SparseLinear(12, 16, sparsity=0.7, generator=g), nn.Tanh(),
                             SparseLinear(16, 6, sparsity=0.6, generator=g))
    if kind == "masked_linear":
        return nn.Sequential(MaskedLinear(12, 16, sparsity=0.7, generator=g, dense_grad=dense_grad), nn.Tanh(),
                             MaskedLinear(16, 6, sparsity=0.6, generator=g, dense_grad=dense_grad))
    conv = SparseConv2d if kind == "conv" else MaskedConv2d
    last = SparseLinear if kind == "conv" else MaskedLinear
    extra = {} if kind == "conv" else {"dense_grad": dense_grad}
    return nn.Sequential(conv(3, 4, 3, stride=2, padding=1, dilation=2, sparsity=0.6, generator=g, **extra),
                         nn.Tanh(), nn.Flatten(), last(64, 5, sparsity=0.75, generator=g, **extra))


def batch(kind: str, step: int, seed: int = 0, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic (input, target) pair for ``step``."""
    g = rng.generator(seed, 777, step)
    if kind in ("linear", "masked_linear"):
        return torch.randn(rows, 12, generator=g), torch.randn(rows, 6, generator=g)
    return torch.randn(2, 3, 9, 9, generator=g), torch.randn(2, 5, generator=g)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, kind: str, step: int, seed: int = 0) -> None:
    x, y = batch(kind, step, seed)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()


def topology(model: nn.Module) -> list[torch.Tensor]:
    from sparsetrain.nn import sparse_layers
    return [m.layout.linear_indices().clone() for m in sparse_layers(model).values()]


def run(name: str, kind: str, steps: int, seed: int = 0, optimizer: str = "sgd_momentum", **hp):
    """Train ``steps`` steps and return (model, optimizer, method, [topology after every step])."""
    from sparsetrain import methods
    model = make_model(kind, dense_grad=(name == "snfs"))
    opt = OPTIMIZERS[optimizer](model.parameters())
    method = methods.create(name, model, opt, total_steps=steps, seed=seed, **hp)
    history = []
    for t in range(steps):
        train_step(model, opt, kind, t)
        method.step()
        history.append(topology(model))
    return model, opt, method, history
