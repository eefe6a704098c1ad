"""VGG with BatchNorm (Simonyan & Zisserman 2015): standard VGG-16/19 and GSE's small CIFAR VGG-16."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import check_choice
from .common import image_shape, scaled

M = "M"
CONFIGS: dict[str, tuple] = {
    "vgg16": (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M),
    "vgg19": (64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M),
}
# GSE's CIFAR VGG-16: every conv width of VGG-16 divided by 4, classifier 512-512 (github.com/mikeheddes/
# guided-stochastic-exploration, models/vgg_cifar.py).
CONFIGS["vgg16_small"] = tuple(c if c == M else c // 4 for c in CONFIGS["vgg16"])
CLASSIFIERS = ("cifar", "imagenet")


def _features(config: Sequence, in_channels: int, width: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for c in config:
        if c == M:
            layers.append(nn.MaxPool2d(2, 2))
            continue
        c = scaled(c, width)
        layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        in_channels = c
    return nn.Sequential(*layers), in_channels


class VGG(nn.Module):
    """features → pool → classifier. The "cifar" head averages to 1×1 and uses ``hidden``-wide layers;
    the "imagenet" head pools to 7×7 and uses ``hidden``=4096 as in the original."""

    def __init__(self, config: Sequence, num_classes: int, in_channels: int, width: float, head: str, hidden: int,
                 dropout: float):
        super().__init__()
        self.features, channels = _features(config, in_channels, width)
        side = 7 if head == "imagenet" else 1
        self.pool = nn.AdaptiveAvgPool2d(side)
        h = scaled(hidden, width)
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, h), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(h, h), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(h, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_vgg(name: str, *, num_classes: int, input_shape: Sequence[int], width: float = 1.0,
              classifier: str | None = None, dropout: float = 0.5) -> VGG:
    """``classifier`` None picks "cifar" for inputs up to 32×32 (and always for vgg16_small), else "imagenet"."""
    channels, h, w = image_shape(input_shape, name, min_side=32)
    if classifier is None:
        classifier = "cifar" if name == "vgg16_small" or max(h, w) <= 32 else "imagenet"
    check_choice(classifier, "classifier", CLASSIFIERS)
    hidden = 512 if classifier == "cifar" else 4096
    return VGG(CONFIGS[name], num_classes, channels, width, classifier, hidden, float(dropout))
