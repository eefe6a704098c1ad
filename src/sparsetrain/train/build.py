"""Turn a validated config into objects: device, data sets, loaders, (sparsified) model and method."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .config import DENSE, method_hyperparameters, with_run_facts


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is an error, never a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but CUDA is not available on this machine (torch "
                          f"{torch.__version__}); use device=cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be one of 'auto', 'cpu', 'cuda'; got {name!r}")
    return torch.device(name)


def build_datasets(config: Mapping, *, test_only: bool = False) -> tuple[Any, Any]:
    """(train set, test set) of ``data.name`` (train set is None with ``test_only``)."""
    from ..data import load_dataset

    data = config["data"]
    # The data set itself (MNIST-1D generation, digits split, teacher) is fixed by data.options.seed
    # (default 0), not by the run seed: runs that differ only in seed train on the same data.
    kwargs = dict(root=data["root"], **data["options"])
    try:
        train = None if test_only else load_dataset(data["name"], train=True, **kwargs)
        test = load_dataset(data["name"], train=False, **kwargs)
    except FileNotFoundError as exc:
        raise ConfigError(f"data.root={data['root']!r} does not hold data set data.name={data['name']!r}: {exc}") \
            from None
    return train, test


def build_loader(dataset, config: Mapping, *, train: bool, device: torch.device, with_indices: bool = False):
    """A SeededLoader: shuffled with drop_last as configured for training, in order for evaluation;
    ``with_indices`` makes it yield example indices too (for forgetting statistics)."""
    from ..data import SeededLoader

    if device.type == "cuda" and hasattr(dataset, "to"):
        dataset.to(device)  # in-memory sets batch (and augment) on the GPU
    data = config["data"]
    if train:
        return SeededLoader(dataset, data["batch_size"], shuffle=True, drop_last=data["drop_last"],
                            seed=config["seed"], with_indices=with_indices)
    return SeededLoader(dataset, data["eval_batch_size"], shuffle=False, drop_last=False, seed=config["seed"])


def build_network(config: Mapping, dataset, device: torch.device) -> nn.Module:
    """The model of ``model.name`` sized for the data set, sparsified as ``sparse.*`` says (unless dense)."""
    from ..models import build_model
    from ..nn import sparsify

    torch.manual_seed(config["seed"])  # dense parts (norms, embeddings) draw from the global generator
    m = config["model"]
    model = build_model(m["name"], num_classes=dataset.num_classes, input_shape=tuple(dataset.input_shape),
                        width=m["width"], **m["options"])
    if config["method"]["name"] != DENSE:
        s = config["sparse"]
        model = sparsify(model, s["sparsity"], distribution=s["distribution"], layout=s["layout"],
                         exclude=s["exclude"], overrides=s["overrides"], seed=config["seed"],
                         dense_grad=s["dense_grad"])
    return model.to(device)


def build_method(config: Mapping, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int,
                 steps_per_epoch: int):
    """The sparse-training method (None for a dense run)."""
    name = config["method"]["name"]
    if name == DENSE:
        return None
    from .. import methods

    return methods.create(name, model, optimizer, total_steps=total_steps, seed=config["seed"],
                          **with_run_facts(name, method_hyperparameters(config), steps_per_epoch=steps_per_epoch))
