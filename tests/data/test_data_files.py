"""CIFAR pickles and ImageNet folders written in the official on-disk formats, then read back."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sparsetrain.data import SeededLoader, load_dataset
from sparsetrain.data.cifar import CIFAR
from sparsetrain.errors import ConfigError


def _write_cifar(folder, files, label_key, n, num_classes, rng):
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in files:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), label_key: labels, b"data": data}, f)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_official_pickles_from_folder_or_parent(tmp_path, name):
    spec = CIFAR[name]
    rng = np.random.default_rng(0)
    written = _write_cifar(tmp_path / spec.folder, spec.train_files + spec.test_files, spec.label_key, 4,
                           spec.num_classes, rng)
    train = load_dataset(name, root=tmp_path)
    assert len(train) == 4 * len(spec.train_files) and train.input_shape == (3, 32, 32)
    assert train.num_classes == spec.num_classes and train.augment is not None
    first_data, first_labels = written[spec.train_files[0]]
    pixels = first_data[1].reshape(3, 32, 32).astype(np.float32) / 255
    expected = (torch.from_numpy(pixels) - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)
    torch.testing.assert_close(train[1][0], expected)
    assert train[1][1] == first_labels[1]
    test = load_dataset(name, root=tmp_path / spec.folder, train=False)
    assert len(test) == 4 and test.augment is None
    assert test.y.tolist() == written[spec.test_files[0]][1]


def test_cifar_augmentation_pads_with_black_and_is_reproducible(tmp_path):
    spec = CIFAR["cifar10"]
    _write_cifar(tmp_path, spec.train_files + spec.test_files, spec.label_key, 4, 10, np.random.default_rng(1))
    train = load_dataset("cifar10", root=tmp_path)
    batches = [x for x, _ in SeededLoader(train, 20, seed=0)]
    again = [x for x, _ in SeededLoader(load_dataset("cifar10", root=tmp_path), 20, seed=0)]
    assert torch.equal(batches[0], again[0])
    black = torch.tensor([-m / s for m, s in zip(spec.mean, spec.std)])
    border = batches[0].permute(0, 2, 3, 1).reshape(-1, 3)
    is_black = torch.isclose(border, black.expand_as(border)).all(1)
    assert is_black.any()  # some padding shows, with the value of a black pixel
    plain = load_dataset("cifar10", root=tmp_path, augment=False)
    assert plain.augment is None


def test_missing_cifar_says_which_files_where_and_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "test_batch" in msg
    assert "never downloads" in msg and str(tmp_path) in msg
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", root=None)


def test_cifar_with_wrong_content_is_refused(tmp_path):
    spec = CIFAR["cifar100"]
    (tmp_path / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
    (tmp_path / "test").write_bytes(b"")
    with pytest.raises(ValueError, match="fine_labels"):
        load_dataset("cifar100", root=tmp_path)
    assert spec.label_key == b"fine_labels"


@pytest.fixture
def image_root(tmp_path):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("val", 1)):
        for wnid in ("n02", "n01"):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for k in range(per_class):
                size = (40 + 8 * k, 36)  # (W, H): images of different sizes
                array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(array).save(folder / f"{wnid}_{k}.JPEG", quality=95)
    (tmp_path / "train" / "n01" / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagenet_folders_labels_and_shapes(image_root):
    train = load_dataset("imagenet", root=image_root, image_size=16, resize_size=20)
    assert train.classes == ["n01", "n02"] and train.num_classes == 2
    assert len(train) == 6 and train.input_shape == (3, 16, 16)
    x, y = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 0
    assert [label for _, label in train.samples] == [0, 0, 0, 1, 1, 1]
    val = load_dataset("imagenet", root=image_root, train=False, image_size=16, resize_size=20)
    assert len(val) == 2 and not val.augment
    xb, yb = val.get_batch(torch.tensor([1, 0]), None)
    assert torch.equal(xb[1], val[0][0]) and yb.tolist() == [1, 0]


def test_imagenet_decode_matches_pillow(image_root):
    ds = load_dataset("imagenet", root=image_root, train=False, image_size=16, resize_size=20)
    with Image.open(ds.samples[0][0]) as img:
        expected = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
    assert torch.equal(ds.decode(0), expected)


def test_imagenet_training_batches_are_augmented_reproducibly(image_root):
    train = load_dataset("imagenet", root=image_root, image_size=16, resize_size=20)
    a = [x for x, _ in SeededLoader(train, 4, seed=3)]
    b = [x for x, _ in SeededLoader(train, 4, seed=3)]
    assert [x.shape for x in a] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    c = [x for x, _ in SeededLoader(train, 4, seed=4)]
    assert not torch.equal(torch.cat(a).sum(0), torch.cat(c).sum(0))


def test_imagenet_missing_split_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train/<wnid>/\*\.JPEG"):
        load_dataset("imagenet", root=tmp_path)
    with pytest.raises(ConfigError, match="resize_size"):
        (tmp_path / "train" / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "x.jpg")
        load_dataset("imagenet", root=tmp_path, image_size=32, resize_size=16)
