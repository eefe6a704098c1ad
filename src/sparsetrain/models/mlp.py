"""Multi-layer perceptron on the flattened input."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import ConfigError, check_choice
from .common import flat_size, scaled

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def build_mlp(*, num_classes: int, input_shape: Sequence[int], width: float = 1.0,
              hidden: int | Sequence[int] = (256, 256), activation: str = "relu") -> nn.Sequential:
    """Flatten → [Linear → activation] per hidden size → Linear to ``num_classes``."""
    check_choice(activation, "activation", ACTIVATIONS)
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise ConfigError(f"hidden must be positive ints (layer sizes), got {hidden!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    n_in = flat_size(input_shape)
    for h in hidden:
        n_out = scaled(h, width)
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        n_in = n_out
    layers.append(nn.Linear(n_in, num_classes))
    return nn.Sequential(*layers)
