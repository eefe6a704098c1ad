"""SeededLoader: batches whose order and augmentation are pure functions of (seed, epoch, batch index).

That makes resuming exact (DESIGN rule 3): the state is just (epoch, position), and a loader restored
from it yields bit-identical remaining batches, mid-epoch included.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

import torch

from .. import rng
from ..errors import ConfigError
from .checks import positive_int
from .dataset import Transform

_ORDER_TAG = 0x0BDE5   # permutation of epoch e: rng.generator(_ORDER_TAG, seed, e)
_AUGMENT_TAG = 0xA0C   # batch b of epoch e on rank r: rng.generator(_AUGMENT_TAG, seed, e, b, r)


class SeededLoader:
    """Iterate over ``dataset`` in batches of ``batch_size``.

    Epoch ``e`` visits a permutation drawn from a generator seeded by (seed, e) (or the natural order with
    ``shuffle=False``). Batch ``b`` gets its own generator seeded by (seed, e, b, rank), used first by
    the dataset's own augmentation (``dataset.get_batch(indices, generator)``) and then by ``transform``
    (called as ``transform(x_batch, generator)``). One ``for`` loop over the loader runs the rest of the
    current epoch; the state then points at the next epoch. With ``world_size > 1`` every rank takes
    the same permutation's every ``world_size``-th index from ``rank`` (padded by wrapping to equal
    length, or truncated with ``drop_last``), as torch's DistributedSampler does.
    """

    def __init__(self, dataset: Any, batch_size: int, *, shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 transform: Transform | None = None, rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.batch_size = positive_int(batch_size, "batch_size")
        self.world_size = positive_int(world_size, "world_size")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ConfigError(f"rank must be an int in [0, {self.world_size}), got {rank!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int, got {seed!r}")
        self.shuffle, self.drop_last, self.seed, self.rank = bool(shuffle), bool(drop_last), seed, rank
        self.transform = transform
        self.epoch, self.position = 0, 0
        if len(self) == 0:
            raise ConfigError(f"the loader would yield no batch: {len(dataset)} samples, batch_size={batch_size}, "
                              f"world_size={world_size}, drop_last={drop_last}")

    def _per_rank(self) -> int:
        n = len(self.dataset)
        return n // self.world_size if self.drop_last else math.ceil(n / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        m = self._per_rank()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch``, in visiting order."""
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=rng.generator(_ORDER_TAG, self.seed, epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            total = self._per_rank() * self.world_size
            if total > n:
                order = order.repeat(math.ceil(total / n))
            order = order[:total][self.rank::self.world_size]
        return order

    def batch_generator(self, epoch: int, batch: int) -> torch.Generator:
        """The generator that batch ``batch`` of ``epoch`` augments with."""
        return rng.generator(_AUGMENT_TAG, self.seed, epoch, batch, self.rank)

    def _fetch(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.dataset
        if hasattr(ds, "get_batch"):
            return ds.get_batch(indices, generator)
        if isinstance(getattr(ds, "x", None), torch.Tensor) and isinstance(getattr(ds, "y", None), torch.Tensor):
            idx = indices.to(ds.x.device)
            return ds.x[idx], ds.y[idx]
        items = [ds[i] for i in indices.tolist()]
        return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, n_batches = self.epoch, len(self)
        order = self.order(epoch)
        for b in range(self.position, n_batches):
            generator = self.batch_generator(epoch, b)
            x, y = self._fetch(order[b * self.batch_size:(b + 1) * self.batch_size], generator)
            if self.transform is not None:
                x = self.transform(x, generator)
            # The state names the next batch before this one is handed out, so a checkpoint taken while
            # the caller works on it resumes after it.
            self.epoch, self.position = (epoch + 1, 0) if b + 1 == n_batches else (epoch, b + 1)
            yield x, y

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch``."""
        self.load_state_dict({"epoch": epoch, "position": 0})

    def state_dict(self) -> dict[str, int]:
        """{"epoch", "position"}: the next batch is batch ``position`` of epoch ``epoch``."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from the batch that ``state`` names (any position in [0, len(self)])."""
        missing = [k for k in ("epoch", "position") if k not in state]
        if missing:
            raise ConfigError(f"loader state lacks {missing}; expected keys 'epoch' and 'position', got {sorted(state)}")
        epoch, position = state["epoch"], state["position"]
        for field, value in (("epoch", epoch), ("position", position)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"loader state {field} must be an int >= 0, got {value!r}")
        if position > len(self):
            raise ConfigError(f"loader state position must be in [0, {len(self)}] (batches per epoch), got {position}")
        self.epoch, self.position = (epoch + 1, 0) if position == len(self) else (epoch, position)

    def __repr__(self) -> str:
        return (f"SeededLoader(batches={len(self)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed}, epoch={self.epoch}, position={self.position})")
