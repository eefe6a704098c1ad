"""In-memory data sets: whole tensors ``x`` / ``y`` so that a batch is one indexing operation."""
from __future__ import annotations

from typing import Callable, Optional

import torch

#: A transform takes a sample (C, H, W) or a batch (N, C, H, W) and a generator for its random choices.
Transform = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


class ArrayDataset:
    """Samples ``x[i]`` (model-ready, e.g. normalised float32) with integer labels ``y[i]``.

    ``augment`` is the split's training augmentation (a batched :data:`Transform`, or None); the
    :class:`~sparsetrain.data.SeededLoader` applies it to every batch it draws with a generator seeded by
    (seed, epoch, batch), so augmentation is reproducible. ``x[i]`` / ``dataset[i]`` are never augmented.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, name: str = "",
                 augment: Transform | None = None):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must hold the same number of samples, got {x.shape[0]} and {y.shape[0]}")
        if y.dtype != torch.int64:
            raise ValueError(f"labels y must be int64, got {y.dtype}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
        self.x, self.y = x, y
        self.num_classes = int(num_classes)
        self.name = name
        self.augment = augment

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.y[index])

    def get_batch(self, indices: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples at ``indices`` (augmented with ``generator`` when the split has an augmentation)."""
        indices = indices.to(self.x.device)
        x = self.x[indices]
        if self.augment is not None:
            x = self.augment(x, generator)
        return x, self.y[indices]

    def to(self, device: torch.device | str) -> "ArrayDataset":
        """Move the tensors (e.g. to the GPU, so that batching and augmentation run there)."""
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def __repr__(self) -> str:
        return (f"ArrayDataset(name={self.name!r}, samples={len(self)}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}, augment={self.augment!r})")
