"""Forgetting statistics and loader removal: methods/mest.md §5 invariants 10-12, state, bad input."""
import math

import pytest
import torch

from sparsetrain import rng
from sparsetrain.data import ArrayDataset, ForgettingTracker, SeededLoader, forgetting_events
from sparsetrain.data.loader import _ORDER_TAG
from sparsetrain.errors import ConfigError


def _dataset(n=10):
    return ArrayDataset(torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n) % 3, 3)


def _present(tracker, index, sequence):
    """One batch per presentation of example ``index``."""
    for c in sequence:
        tracker.record(torch.tensor([index]), torch.tensor([bool(c)]))


@pytest.mark.parametrize("sequence, expected", [
    ([0, 1, 1, 0, 1, 0, 0, 1], 2), ([1, 1, 1], 0), ([1, 0], 1), ([0, 1], 0), ([0, 0, 0], math.inf), ([], math.inf)])
def test_invariant_10_forgetting_counts_of_hand_made_sequences(sequence, expected):
    assert forgetting_events(sequence) == expected          # one batch holding every presentation
    tracker = ForgettingTracker(3)
    _present(tracker, 1, sequence)                          # one presentation per batch
    assert tracker.counts().tolist() == [math.inf, expected, math.inf]
    if expected == math.inf and sequence:
        assert tracker.removal(remove_n=3).numel() == 0     # never learned: never removed


def test_repeated_indices_in_a_batch_count_in_batch_order():
    g = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 5, (200,), generator=g)
    correct = torch.rand(200, generator=g) < 0.6
    batched, one_by_one = ForgettingTracker(5), ForgettingTracker(5)
    for start in range(0, 200, 25):
        batched.record(indices[start:start + 25], correct[start:start + 25])
    for i, c in zip(indices.tolist(), correct.tolist()):
        _present(one_by_one, i, [c])
    for a, b in zip(batched.state_dict().values(), one_by_one.state_dict().values()):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b
    expected = [forgetting_events(correct[indices == i].tolist()) for i in range(5)]
    assert batched.counts().tolist() == expected


def _invariant_11_tracker():
    """F = {a:0, b:2, c:0, d:1, e:never} for examples 0..4."""
    tracker = ForgettingTracker(5)
    for index, sequence in enumerate([[1, 1], [1, 0, 1, 0, 1], [0, 1], [1, 0, 1], [0, 0, 0]]):
        _present(tracker, index, sequence)
    assert tracker.counts().tolist() == [0, 2, 0, 1, math.inf]
    return tracker


def test_invariant_11_lowest_n_removes_a_c_d():
    tracker = _invariant_11_tracker()
    removed = tracker.removal(remove_n=3)
    assert removed.dtype == torch.int64 and removed.tolist() == [0, 2, 3]
    assert tracker.removal(3, keep_lowest_n=1).tolist() == [1, 2, 3]   # skips a, takes c, d, b
    assert tracker.removal(10, keep_lowest_n=2).tolist() == [1, 3]     # e (never learned) stays: fewer come back
    assert tracker.removal(0).tolist() == []
    assert tracker.removal(mode="unforgettable").tolist() == [0, 2]
    assert tracker.stats() == {"presented": 5, "learned": 4, "unforgettable": 2, "never_learned": 1,
                               "forgetting_events": 3}


def test_state_round_trip_and_reset():
    tracker = _invariant_11_tracker()
    state = tracker.state_dict()
    other = ForgettingTracker(5)
    other.load_state_dict(state)
    assert other.counts().tolist() == tracker.counts().tolist()
    _present(tracker, 0, [0])
    assert state["forgets"].tolist() == [0, 2, 0, 1, 0]                # the saved state is a copy
    tracker.reset()
    assert tracker.stats()["presented"] == 0 and torch.isinf(tracker.counts()).all()
    with pytest.raises(ConfigError, match="num_examples=5, this tracker has 6"):
        ForgettingTracker(6).load_state_dict(state)
    with pytest.raises(ConfigError, match=r"state forgets must be a torch.int32 tensor of shape \(5,\)"):
        other.load_state_dict({**state, "forgets": torch.zeros(4, dtype=torch.int32)})
    with pytest.raises(ConfigError, match="lacks \\['learned'\\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "learned"})


@pytest.mark.parametrize("call, message", [
    (lambda t: t.removal(3, mode="highest"), "mode must be one of 'lowest_n', 'unforgettable'; got 'highest'"),
    (lambda t: t.removal(-1), "remove_n must be an integer >= 0, got -1"),
    (lambda t: t.removal(1, keep_lowest_n=-2), "keep_lowest_n must be an integer >= 0, got -2"),
    (lambda t: t.removal(), "remove_n must be an integer >= 0 in mode 'lowest_n'"),
    (lambda t: t.removal(3, mode="unforgettable"), "remove_n and keep_lowest_n must be left unset"),
    (lambda t: t.record(torch.tensor([0, 4]), torch.tensor([True, True])), r"indices must lie in \[0, 4\)"),
    (lambda t: t.record(torch.tensor([-1]), torch.tensor([True])), r"indices must lie in \[0, 4\)"),
    (lambda t: t.record(torch.tensor([0, 1]), torch.tensor([True])), "2 indices, 1 values"),
    (lambda t: t.record(torch.tensor([0.0]), torch.tensor([True])), "indices must be a 1-D integer tensor"),
    (lambda t: t.record(torch.tensor([0]), torch.tensor([1])), "correct must be a 1-D bool tensor"),
])
def test_bad_input_names_the_field(call, message):
    with pytest.raises(ConfigError, match=message):
        call(ForgettingTracker(4))
    with pytest.raises(ConfigError, match="num_examples must be an integer >= 1"):
        ForgettingTracker(0)


# --- the loader side -------------------------------------------------------------------------------
def _ids(loader):
    out = []
    for x, y, idx in loader:
        assert torch.equal(x[:, 0].long(), idx) and torch.equal(y, idx % 3)  # indices travel with their samples
        out.append(idx.clone())
    return torch.cat(out)


def test_invariant_12_after_removal_the_loader_never_yields_removed_indices():
    loader = SeededLoader(_dataset(10), 3, seed=2, with_indices=True)
    plain = SeededLoader(_dataset(10), 3, seed=2)
    for (xa, ya, _), (xb, yb) in zip(loader, plain):                      # with_indices changes nothing else
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert loader.removed.tolist() == [] and "removed" not in loader.state_dict()
    loader.remove(torch.tensor([7, 1, 4]))
    loader.remove([4, 9])                                                 # cumulative, repeats allowed
    assert loader.removed.tolist() == [1, 4, 7, 9] and len(loader) == 2
    kept = torch.tensor([0, 2, 3, 5, 6, 8])
    for epoch in range(1, 4):
        ids = _ids(loader)
        expected = kept[torch.randperm(6, generator=rng.generator(_ORDER_TAG, 2, epoch))]
        assert torch.equal(ids, expected)                                 # kept[randperm(len(kept), gen(seed, e))]
        assert not set(ids.tolist()) & {1, 4, 7, 9}


def test_removed_set_is_in_the_state_and_resumes_mid_epoch():
    loader = SeededLoader(_dataset(11), 2, seed=5, with_indices=True)
    _ids(loader)
    loader.remove([0, 3, 10])
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["position"] == 1 and state["removed"].tolist() == [0, 3, 10]
    rest = torch.cat([idx for _, _, idx in it])
    resumed = SeededLoader(_dataset(11), 2, seed=5, with_indices=True)
    resumed.load_state_dict(state)
    assert torch.equal(_ids(resumed), rest)
    resumed.set_epoch(7)                                                  # set_epoch keeps the removal
    assert resumed.removed.tolist() == [0, 3, 10]
    resumed.load_state_dict({"epoch": 0, "position": 0})                  # an old state: nothing removed
    assert resumed.removed.tolist() == [] and len(resumed) == 6


def test_bad_removals_are_refused():
    loader = SeededLoader(_dataset(10), 3, seed=0, drop_last=True)
    with pytest.raises(ConfigError, match=r"indices must lie in \[0, 10\)"):
        loader.remove([10])
    with pytest.raises(ConfigError, match="leaves no batch"):
        loader.remove(list(range(8)))
    assert loader.removed.tolist() == []
    next(iter(loader))
    with pytest.raises(ConfigError, match="only at an epoch boundary"):
        loader.remove([0])
    with pytest.raises(ConfigError, match="loader state removed must lie in"):
        SeededLoader(_dataset(10), 3).load_state_dict({"epoch": 0, "position": 0, "removed": [11]})
