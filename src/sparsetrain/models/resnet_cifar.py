"""CIFAR ResNets (He et al. 2016, §4.2): 6n+2 layers, stages of 16/32/64 channels, option-A shortcuts."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import image_shape, scaled
from .resnet import Basic


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad new channels (evenly on both sides); no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad)) if any(self.pad) else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad}"


def basic_block(in_channels: int, channels: int, stride: int) -> Basic:
    """The ImageNet basic block with an option-A (parameter-free) shortcut."""
    shortcut = (PadShortcut(in_channels, channels, stride) if stride != 1 or in_channels != channels
                else nn.Identity())
    return Basic(in_channels, channels, stride, shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, width: float):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, c_in = [], widths[0]
        for stage, c in enumerate(widths):
            for i in range(n):
                blocks.append(basic_block(c_in, c, 2 if stage > 0 and i == 0 else 1))
                c_in = c
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_cifar_resnet(depth: int, *, num_classes: int, input_shape: Sequence[int], width: float = 1.0) -> CifarResNet:
    channels, _, _ = image_shape(input_shape, f"resnet{depth}")
    return CifarResNet(depth, num_classes, channels, width)
