"""Build the optimizer named in the config (SGD / Adam / AdamW) over all model parameters."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import check_choice
from ..nn import param_groups
from .config import OPTIMIZERS


def build_optimizer(model: nn.Module, optim: Mapping) -> torch.optim.Optimizer:
    """Parameter groups at ``optim.lr`` (DynaDiag's diagonal importances α in a group without weight decay,
    D3); the schedule rescales ``lr`` each step from ``initial_lr``."""
    name = check_choice(optim["name"], "optim.name", OPTIMIZERS)
    lr, wd = float(optim["lr"]), float(optim["weight_decay"])
    params = param_groups(model, wd)
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=float(optim["momentum"]),
                                                     nesterov=bool(optim["nesterov"]), weight_decay=wd)
    else:
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        opt = cls(params, lr=lr, betas=tuple(optim["betas"]), eps=float(optim["eps"]), weight_decay=wd)
    for group in opt.param_groups:
        group["initial_lr"] = lr
    return opt
