"""ImageNet-style image folders: ``root/{train,val}/<class>/*.JPEG``, decoded lazily with Pillow."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .checks import positive_int
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, CenterCrop, Compose, Normalize, RandomHorizontalFlip,
                         RandomResizedCrop, Resize, ToFloat)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in os.scandir(folder) if d.is_dir())


class ImageFolderDataset:
    """Images under ``root/<split>/<class>/``; labels index the sorted class-folder names of ``root/train``
    (of the split itself when there is no train folder), so train and val agree on every label.

    ``dataset[i]`` is the evaluation view (resize shorter side to ``resize_size``, centre crop
    ``image_size``, normalise). With ``augment`` the loader's :meth:`get_batch` instead draws the
    Inception random resized crop + horizontal flip from the batch generator.
    """

    def __init__(self, root: str | os.PathLike, split: str, *, image_size: int = 224, resize_size: int = 256,
                 augment: bool = False):
        self.root = Path(root).expanduser()
        self.split = split
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"ImageNet split {split!r} not found: expected {folder}/<class>/*.JPEG (layout root/train/<wnid>/"
                f"*.JPEG and root/val/<wnid>/*.JPEG, validation images sorted into class folders); "
                f"sparsetrain never downloads data.")
        label_source = self.root / "train" if (self.root / "train").is_dir() else folder
        self.classes = _class_dirs(label_source)
        index = {c: i for i, c in enumerate(self.classes)}
        extra = [c for c in _class_dirs(folder) if c not in index]
        if extra:
            raise ValueError(f"{folder} has class folders that {label_source} lacks: {extra[:5]}")
        self.samples: list[tuple[str, int]] = []
        for c in self.classes:
            class_dir = folder / c
            if class_dir.is_dir():
                names = sorted(e.name for e in os.scandir(class_dir)
                               if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
                self.samples.extend((str(class_dir / n), index[c]) for n in names)
        if not self.samples:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}/<class>/")
        self.num_classes = len(self.classes)
        self.image_size = positive_int(image_size, "image_size")
        self.resize_size = positive_int(resize_size, "resize_size")
        if self.resize_size < self.image_size:
            raise ConfigError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")
        self.augment = bool(augment)
        normalise = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.eval_transform = Compose(ToFloat(), Resize(self.resize_size), CenterCrop(self.image_size), normalise)
        self.train_transform = Compose(ToFloat(), RandomResizedCrop(self.image_size), RandomHorizontalFlip(),
                                       normalise)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def decode(self, index: int) -> torch.Tensor:
        """The image at ``index`` as uint8 (3, H, W)."""
        from PIL import Image

        path = self.samples[index][0]
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.eval_transform(self.decode(index)), self.samples[index][1]

    def get_batch(self, indices: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and stack the images at ``indices`` in order (augmented from ``generator`` when ``augment``)."""
        transform = self.train_transform if self.augment else self.eval_transform
        idx = indices.tolist()
        x = torch.stack([transform(self.decode(i), generator) for i in idx])
        y = torch.tensor([self.samples[i][1] for i in idx], dtype=torch.int64)
        return x, y

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, "
                f"num_classes={self.num_classes}, input_shape={self.input_shape}, augment={self.augment})")


def load_imagenet(*, root: str | os.PathLike | None, train: bool, image_size: int = 224, resize_size: int = 256,
                  augment: bool | None = None) -> ImageFolderDataset:
    """``root/train`` or ``root/val``; ``augment`` defaults to on for train."""
    if root is None:
        raise FileNotFoundError("imagenet needs root=<directory> holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; "
                                "sparsetrain never downloads data.")
    return ImageFolderDataset(root, "train" if train else "val", image_size=image_size, resize_size=resize_size,
                              augment=train if augment is None else bool(augment))
