"""Image transforms written on torch, for one image (C, H, W) or a batch (N, C, H, W).

Every transform is called as ``t(x, generator)``. Random transforms draw all their choices from
``generator`` (a CPU torch.Generator, required: no hidden global randomness, DESIGN rule 2), one draw per
sample in batch order, so a batch's augmentation is a pure function of the generator's seed. The pixel
work runs on ``x.device``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _batched(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """(N, C, H, W) view of ``x`` and whether it was a single image."""
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"{name} expects an image (C, H, W) or a batch (N, C, H, W), got shape {tuple(x.shape)}")


def _require(generator: torch.Generator | None, name: str) -> torch.Generator:
    if generator is None:
        raise ValueError(f"{name} is random and needs a torch.Generator (pass one, e.g. sparsetrain.rng.generator(seed))")
    return generator


def _channel_vector(values: float | Sequence[float], x: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1)
    if v.numel() not in (1, x.shape[-3]):
        raise ValueError(f"expected 1 or {x.shape[-3]} per-channel values, got {v.numel()}")
    return v.view(-1, 1, 1)


class Compose:
    """Apply transforms in order, sharing one generator (draws happen in that order)."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.transforms))})"


class ToFloat:
    """uint8 pixels in [0, 255] → float32 in [0, 1]."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise ValueError(f"ToFloat expects uint8 pixels, got {x.dtype}")
        return x.to(torch.float32).div_(255.0)

    def __repr__(self) -> str:
        return "ToFloat()"


class Normalize:
    """(x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not x.is_floating_point():
            raise ValueError(f"Normalize expects floating-point pixels, got {x.dtype} (apply ToFloat first)")
        return (x - _channel_vector(self.mean, x)) / _channel_vector(self.std, x)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomHorizontalFlip:
    """Mirror each sample left–right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        xb, single = _batched(x, "RandomHorizontalFlip")
        flip = torch.rand(xb.shape[0], generator=_require(generator, "RandomHorizontalFlip")) < self.p
        out = torch.where(flip.to(xb.device).view(-1, 1, 1, 1), xb.flip(-1), xb)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomCrop:
    """Pad every side by ``padding`` with ``fill`` (per channel), then cut a random ``size`` window per sample.

    ``fill`` lets normalised data be padded with the value a black pixel normalises to, which makes
    crop-after-normalise equal to the usual pad-crop-then-normalise.
    """

    def __init__(self, size: int | Sequence[int], padding: int = 0, fill: float | Sequence[float] = 0.0):
        self.size, self.padding = _pair(size), int(padding)
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.fill = fill

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        xb, single = _batched(x, "RandomCrop")
        g = _require(generator, "RandomCrop")
        n, c, h, w = xb.shape
        p, (th, tw) = self.padding, self.size
        if th > h + 2 * p or tw > w + 2 * p:
            raise ValueError(f"RandomCrop size {self.size} exceeds the padded image {(h + 2 * p, w + 2 * p)}")
        padded = xb
        if p:
            padded = _channel_vector(self.fill, xb).expand(n, c, h + 2 * p, w + 2 * p).clone()
            padded[:, :, p:p + h, p:p + w] = xb
        top = torch.randint(0, h + 2 * p - th + 1, (n,), generator=g).to(xb.device)
        left = torch.randint(0, w + 2 * p - tw + 1, (n,), generator=g).to(xb.device)
        rows = (top[:, None] + torch.arange(th, device=xb.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(tw, device=xb.device))[:, None, None, :]
        out = padded[torch.arange(n, device=xb.device).view(-1, 1, 1, 1),
                     torch.arange(c, device=xb.device).view(1, -1, 1, 1), rows, cols]
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}, fill={self.fill})"


def _resize(xb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if not xb.is_floating_point():
        raise ValueError(f"resizing needs floating-point pixels, got {xb.dtype} (apply ToFloat first)")
    if tuple(xb.shape[-2:]) == size:
        return xb
    return F.interpolate(xb, size=size, mode="bilinear", align_corners=False, antialias=True)


class Resize:
    """Scale so that the shorter side is ``size`` (aspect ratio kept), bilinear with antialiasing."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        xb, single = _batched(x, "Resize")
        h, w = xb.shape[-2:]
        if h <= w:
            target = (self.size, int(self.size * w / h))
        else:
            target = (int(self.size * h / w), self.size)
        out = _resize(xb, target)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class CenterCrop:
    """The central ``size`` window."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"CenterCrop size {self.size} exceeds the image {(h, w)}")
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return x[..., top:top + th, left:left + tw]

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, resized to ``size``.

    The Inception-style crop used for ImageNet training: up to 10 tries to draw a window that fits, then
    the central window with the ratio clamped to ``ratio``. Each sample draws its own window.
    """

    def __init__(self, size: int | Sequence[int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = _pair(size), tuple(scale), tuple(ratio)

    def window(self, h: int, w: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width) of one random window in an h × w image."""
        area = h * w
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                return top, left, ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        xb, single = _batched(x, "RandomResizedCrop")
        g = _require(generator, "RandomResizedCrop")
        h, w = xb.shape[-2:]
        crops = []
        for i in range(xb.shape[0]):
            top, left, ch, cw = self.window(h, w, g)
            crops.append(_resize(xb[i:i + 1, :, top:top + ch, left:left + cw], self.size))
        out = torch.cat(crops)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"
