"""SeededLoader: batches whose order and augmentation are pure functions of (seed, epoch, batch index).

That makes resuming exact (DESIGN rule 3): the state is just (epoch, position) and the removed examples,
and a loader restored from it yields bit-identical remaining batches, mid-epoch included.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import torch

from .. import rng
from ..errors import ConfigError, check_int
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

    ``with_indices=True`` yields ``(x, y, indices)`` (int64, on the CPU: the examples' dataset indices), e.g.
    for a :class:`~sparsetrain.data.ForgettingTracker`. :meth:`remove` drops examples from every later epoch:
    epoch ``e`` then visits ``kept[randperm(len(kept), generator(seed, e))]``, still a pure function of
    (seed, epoch, removed set); without removal the order is exactly what it was before removal existed.
    """

    def __init__(self, dataset: Any, batch_size: int, *, shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 transform: Transform | None = None, rank: int = 0, world_size: int = 1, with_indices: bool = False):
        self.dataset = dataset
        self.batch_size = positive_int(batch_size, "batch_size")
        self.world_size = positive_int(world_size, "world_size")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ConfigError(f"rank must be an int in [0, {self.world_size}), got {rank!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int, got {seed!r}")
        self.shuffle, self.drop_last, self.seed, self.rank = bool(shuffle), bool(drop_last), seed, rank
        self.transform = transform
        self.with_indices = bool(with_indices)
        self.epoch, self.position = 0, 0
        self._kept: torch.Tensor | None = None  # sorted kept indices once something is removed
        if len(self) == 0:
            raise ConfigError(f"the loader would yield no batch: {len(dataset)} samples, batch_size={batch_size}, "
                              f"world_size={world_size}, drop_last={drop_last}")

    def _num_kept(self) -> int:
        return len(self.dataset) if self._kept is None else int(self._kept.numel())

    def _per_rank(self, n: int) -> int:
        return n // self.world_size if self.drop_last else math.ceil(n / self.world_size)

    def batches_per_epoch(self, samples: int | None = None) -> int:
        """Batches per epoch on this rank for ``samples`` examples (default: the kept ones), e.g. to plan a
        run before :meth:`remove`."""
        m = self._per_rank(self._num_kept() if samples is None else check_int(samples, "samples", 0))
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def __len__(self) -> int:
        """Batches per epoch (on this rank), of the kept examples."""
        return self.batches_per_epoch()

    @property
    def removed(self) -> torch.Tensor:
        """Sorted int64 indices of the removed examples (empty when none)."""
        if self._kept is None:
            return torch.zeros(0, dtype=torch.int64)
        gone = torch.ones(len(self.dataset), dtype=torch.bool)
        gone[self._kept] = False
        return torch.nonzero(gone).flatten()

    def remove(self, indices: torch.Tensor | Sequence[int]) -> None:
        """Drop ``indices`` (dataset indices; added to those removed before) from the epoch the next iteration
        starts and every later one.

        Only at an epoch boundary (position 0), so an epoch is never half one order and half another.
        """
        if self.position != 0:
            raise ConfigError(f"remove() works only at an epoch boundary; the loader is at batch {self.position} "
                              f"of epoch {self.epoch}")
        self._set_removed(torch.cat([self.removed, self._check_indices(indices, "indices")]))

    def _check_indices(self, indices: Any, field: str) -> torch.Tensor:
        n = len(self.dataset)
        t = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(list(indices), dtype=torch.int64)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.ndim != 1:
            raise ConfigError(f"{field} must be a 1-D integer tensor or list of dataset indices, got a {t.dtype} "
                              f"tensor of shape {tuple(t.shape)}")
        t = t.to("cpu", torch.int64)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
            raise ConfigError(f"{field} must lie in [0, {n}) (dataset size); got range [{int(t.min())}, "
                              f"{int(t.max())}]")
        return t

    def _set_removed(self, removed: torch.Tensor) -> None:
        keep = torch.ones(len(self.dataset), dtype=torch.bool)
        keep[removed] = False
        kept = torch.nonzero(keep).flatten()
        if self.batches_per_epoch(int(kept.numel())) == 0:
            raise ConfigError(f"removing {len(self.dataset) - kept.numel()} of {len(self.dataset)} examples leaves "
                              f"no batch (batch_size={self.batch_size}, world_size={self.world_size}, "
                              f"drop_last={self.drop_last})")
        self._kept = None if kept.numel() == len(self.dataset) else kept

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch``, in visiting order."""
        n = self._num_kept()
        if self.shuffle:
            order = torch.randperm(n, generator=rng.generator(_ORDER_TAG, self.seed, epoch))
            if self._kept is not None:
                order = self._kept[order]
        else:
            order = torch.arange(n) if self._kept is None else self._kept.clone()
        if self.world_size > 1:
            total = self._per_rank(n) * self.world_size
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch, n_batches = self.epoch, len(self)
        order = self.order(epoch)
        for b in range(self.position, n_batches):
            generator = self.batch_generator(epoch, b)
            indices = order[b * self.batch_size:(b + 1) * self.batch_size]
            x, y = self._fetch(indices, generator)
            if self.transform is not None:
                x = self.transform(x, generator)
            # The state names the next batch before this one is handed out, so a checkpoint taken while
            # the caller works on it resumes after it.
            self.epoch, self.position = (epoch + 1, 0) if b + 1 == n_batches else (epoch, b + 1)
            yield (x, y, indices) if self.with_indices else (x, y)

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch`` (removed examples stay removed)."""
        self.load_state_dict({**self.state_dict(), "epoch": epoch, "position": 0})

    def state_dict(self) -> dict[str, Any]:
        """{"epoch", "position"}: the next batch is batch ``position`` of epoch ``epoch``; plus "removed"
        (sorted int64 tensor) only when examples were removed."""
        state: dict[str, Any] = {"epoch": self.epoch, "position": self.position}
        if self._kept is not None:
            state["removed"] = self.removed
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from the batch that ``state`` names (any position in [0, len(self)]); a state without
        "removed" means nothing removed."""
        missing = [k for k in ("epoch", "position") if k not in state]
        if missing:
            raise ConfigError(f"loader state lacks {missing}; expected keys 'epoch' and 'position', got {sorted(state)}")
        epoch, position = state["epoch"], state["position"]
        for field, value in (("epoch", epoch), ("position", position)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"loader state {field} must be an int >= 0, got {value!r}")
        removed = self._check_indices(state["removed"], "loader state removed") if "removed" in state \
            else torch.zeros(0, dtype=torch.int64)
        kept_before = self._kept
        self._set_removed(removed)
        if position > len(self):
            self._kept = kept_before
            raise ConfigError(f"loader state position must be in [0, {len(self)}] (batches per epoch), got {position}")
        self.epoch, self.position = (epoch + 1, 0) if position == len(self) else (epoch, position)

    def __repr__(self) -> str:
        removed = f", removed={len(self.dataset) - self._num_kept()}" if self._kept is not None else ""
        return (f"SeededLoader(batches={len(self)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed}, epoch={self.epoch}, position={self.position}"
                f"{removed})")
