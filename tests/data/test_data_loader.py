"""SeededLoader: order as a function of (seed, epoch), exact mid-epoch resume, drop_last, sharding."""
import pytest
import torch

from sparsetrain.data import ArrayDataset, Compose, RandomCrop, RandomHorizontalFlip, SeededLoader
from sparsetrain.errors import ConfigError


def _dataset(n=10, augment=None):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    x = x + torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 100
    return ArrayDataset(x, torch.arange(n) % 3, 3, augment=augment)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batches_cover_the_dataset_once_per_epoch_in_a_seeded_order():
    loader = SeededLoader(_dataset(10), 3, seed=4)
    assert len(loader) == 4
    first = _epoch(loader)
    assert [len(y) for _, y in first] == [3, 3, 3, 1]
    ids = torch.cat([x[:, 0, 0, 0] for x, _ in first]).long()
    assert sorted(ids.tolist()) == list(range(10))
    assert ids.tolist() != list(range(10))
    assert loader.state_dict() == {"epoch": 1, "position": 0}
    second = torch.cat([x[:, 0, 0, 0] for x, _ in _epoch(loader)]).long()
    assert second.tolist() != ids.tolist()  # a new permutation each epoch
    again = SeededLoader(_dataset(10), 3, seed=4)
    assert torch.equal(torch.cat([x[:, 0, 0, 0] for x, _ in _epoch(again)]).long(), ids)
    other = SeededLoader(_dataset(10), 3, seed=5)
    assert not torch.equal(torch.cat([x[:, 0, 0, 0] for x, _ in _epoch(other)]).long(), ids)


def test_labels_travel_with_their_samples():
    ds = _dataset(10)
    for x, y in SeededLoader(ds, 4, seed=1):
        assert torch.equal(y, x[:, 0, 0, 0].long() % 3)


def test_no_shuffle_keeps_dataset_order_and_drop_last_drops_the_tail():
    loader = SeededLoader(_dataset(10), 3, shuffle=False, drop_last=True)
    assert len(loader) == 3
    ids = [x[:, 0, 0, 0].long().tolist() for x, _ in loader]
    assert ids == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


@pytest.mark.parametrize("stop", [0, 1, 2, 3])
def test_resume_mid_epoch_gives_bit_identical_remaining_batches(stop):
    augment = Compose(RandomCrop(4, padding=1), RandomHorizontalFlip())
    reference = SeededLoader(_dataset(11, augment), 3, seed=7)
    _epoch(reference)
    expected = _epoch(reference)  # epoch 1, augmented
    run = SeededLoader(_dataset(11, augment), 3, seed=7)
    _epoch(run)
    it = iter(run)
    for _ in range(stop):
        next(it)
    state = run.state_dict()
    assert state == {"epoch": 1, "position": stop}
    resumed = SeededLoader(_dataset(11, augment), 3, seed=7)
    resumed.load_state_dict(state)
    rest = _epoch(resumed)
    assert len(rest) == len(expected) - stop
    for (xa, ya), (xb, yb) in zip(rest, expected[stop:]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert resumed.state_dict() == {"epoch": 2, "position": 0}


def test_augmentation_differs_between_batches_and_epochs_but_not_between_runs():
    augment = RandomHorizontalFlip(0.5)
    ds = _dataset(64, augment)
    a = SeededLoader(ds, 64, shuffle=False, seed=1)
    e0, e1 = _epoch(a)[0][0], _epoch(a)[0][0]
    assert not torch.equal(e0, e1)
    assert torch.equal(_epoch(SeededLoader(ds, 64, shuffle=False, seed=1))[0][0], e0)
    assert not torch.equal(ds.x, e0) and torch.equal(ds.x, _dataset(64).x)  # the stored data stay untouched


def test_loader_transform_receives_the_batch_generator():
    seen = []

    def record(x, g):
        seen.append(torch.rand(1, generator=g).item())
        return x * 2

    loader = SeededLoader(_dataset(6), 2, seed=3, transform=record)
    batches = _epoch(loader)
    assert torch.equal(batches[0][0] / 2, _epoch(SeededLoader(_dataset(6), 2, seed=3))[0][0])
    assert seen[0] == torch.rand(1, generator=loader.batch_generator(0, 0)).item()
    assert len(set(seen)) == 3


def test_breaking_out_after_last_batch_starts_next_epoch():
    loader = SeededLoader(_dataset(4), 2, seed=0)
    it = iter(loader)
    next(it), next(it)
    assert loader.state_dict() == {"epoch": 1, "position": 0}
    assert len(_epoch(loader)) == 2


def test_ranks_partition_the_permutation():
    ds = _dataset(10)
    shards = [SeededLoader(ds, 2, seed=2, rank=r, world_size=3) for r in range(3)]
    assert {len(s) for s in shards} == {2}  # ceil(10/3)=4 samples per rank, padded by wrapping
    ids = [torch.cat([x[:, 0, 0, 0] for x, _ in s]).long().tolist() for s in shards]
    full = SeededLoader(ds, 10, seed=2).order(0).tolist()
    padded = full + full[:2]
    for r in range(3):
        assert ids[r] == padded[r::3]


def test_bad_arguments_and_state_are_refused():
    with pytest.raises(ConfigError, match="batch_size"):
        SeededLoader(_dataset(4), 0)
    with pytest.raises(ConfigError, match="no batch"):
        SeededLoader(_dataset(4), 5, drop_last=True)
    with pytest.raises(ConfigError, match="rank"):
        SeededLoader(_dataset(4), 2, rank=2, world_size=2)
    loader = SeededLoader(_dataset(4), 2)
    with pytest.raises(ConfigError, match="position"):
        loader.load_state_dict({"epoch": 0, "position": 3})
    with pytest.raises(ConfigError, match="lacks"):
        loader.load_state_dict({"epoch": 0})
