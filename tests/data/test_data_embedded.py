"""digits, mnist1d and teacher: shapes, splits, determinism, caching."""
import random

import numpy as np
import pytest
import torch

from sparsetrain.data import load_dataset
from sparsetrain.data.digits import split_indices
from sparsetrain.data.mnist1d import cache_path
from sparsetrain.data.teacher import teacher_layers
from sparsetrain.errors import ConfigError


def test_digits_split_shapes_and_standardisation():
    train, test = load_dataset("digits", seed=3), load_dataset("digits", train=False, seed=3)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.input_shape == (64,) and train.num_classes == 10 and train.x.dtype == torch.float32
    x, y = train[0]
    assert x.shape == (64,) and isinstance(y, int)
    varying = train.x.std(0) > 0
    torch.testing.assert_close(train.x.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.x.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-4, rtol=0)
    assert set(train.y.tolist()) == set(range(10))


def test_digits_split_is_a_seeded_partition_standardised_with_train_statistics():
    from sklearn.datasets import load_digits
    raw = torch.as_tensor(load_digits().data, dtype=torch.float64) / 16
    train_idx, test_idx = split_indices(1797, 1, 0.2)
    assert sorted(torch.cat([train_idx, test_idx]).tolist()) == list(range(1797))
    assert torch.equal(split_indices(1797, 1, 0.2)[0], train_idx)
    assert not torch.equal(split_indices(1797, 2, 0.2)[0], train_idx)
    mean, std = raw[train_idx].mean(0), raw[train_idx].std(0)
    std[std == 0] = 1
    for train, idx in ((True, train_idx), (False, test_idx)):
        ds = load_dataset("digits", seed=1, train=train)
        torch.testing.assert_close(ds.x.double(), (raw[idx] - mean) / std, atol=1e-6, rtol=1e-6)
        assert ds.y.tolist() == load_digits().target[idx.numpy()].tolist()


@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_mnist1d_generates_once_then_reads_the_cache(mnist1d_root):
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    train = load_dataset("mnist1d", root=mnist1d_root, seed=5)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)  # global RNGs untouched
    path = cache_path(5, mnist1d_root)
    assert path.is_file()
    assert len(train) == 4000 and train.input_shape == (40,) and train.num_classes == 10
    test = load_dataset("mnist1d", root=mnist1d_root, seed=5, train=False)
    assert len(test) == 1000
    stamp = path.stat().st_mtime_ns
    again = load_dataset("mnist1d", root=mnist1d_root, seed=5)
    assert path.stat().st_mtime_ns == stamp
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


def test_mnist1d_cache_equals_fresh_generation(mnist1d_root, tmp_path):
    cached = load_dataset("mnist1d", root=mnist1d_root, seed=5, train=False)
    fresh = load_dataset("mnist1d", root=tmp_path, seed=5, train=False)
    assert torch.equal(cached.x, fresh.x) and torch.equal(cached.y, fresh.y)


def test_mnist1d_broken_cache_names_the_file(tmp_path):
    np.savez(cache_path(0, tmp_path), x=np.zeros(3))
    with pytest.raises(ValueError, match="mnist1d-0.npz"):
        load_dataset("mnist1d", root=tmp_path, seed=0)


def test_teacher_is_deterministic_and_train_test_are_disjoint():
    opts = dict(n_samples=300, n_test=100, n_features=8, n_classes=4, hidden=(16,), teacher_sparsity=0.75)
    a = load_dataset("teacher", seed=2, **opts)
    b = load_dataset("teacher", seed=2, **opts)
    t = load_dataset("teacher", seed=2, train=False, **opts)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.x.shape == (300, 8) and len(t) == 100 and a.num_classes == 4
    assert not torch.isin(t.x[:, 0], a.x[:, 0]).any()
    assert not torch.equal(load_dataset("teacher", seed=3, **opts).y, a.y)
    counts = torch.bincount(a.y, minlength=4)
    assert counts.min() > 300 / 4 / 3  # calibrated offsets keep classes roughly balanced


def test_teacher_labels_come_from_a_sparse_network():
    weights = teacher_layers(8, (16,), 4, 0.75, seed=2)
    assert [tuple(w.shape) for w in weights] == [(16, 8), (4, 16)]
    assert [int((w != 0).sum()) for w in weights] == [32, 16]
    ds = load_dataset("teacher", seed=2, n_samples=200, n_features=8, n_classes=4, hidden=16, teacher_sparsity=0.75)
    logits = torch.relu(ds.x.double() @ weights[0].t()) @ weights[1].t()
    # labels are the argmax up to per-class offsets: the same input ordering of classes on most samples
    agree = (logits.argmax(1) == ds.y).double().mean()
    assert agree > 0.5


@pytest.mark.parametrize("option, value, field", [("n_samples", 0, "n_samples"), ("teacher_sparsity", 1.0,
                         "teacher_sparsity"), ("hidden", (4, -1), "hidden"), ("n_classes", 1, "n_classes")])
def test_teacher_bad_options_name_the_field(option, value, field):
    with pytest.raises(ConfigError, match=field):
        load_dataset("teacher", **{option: value})
