"""load_dataset: names, options and their errors."""
import pytest

from sparsetrain.data import DATASETS, dataset_options, load_dataset
from sparsetrain.errors import ConfigError


def test_dataset_names():
    assert DATASETS == ("digits", "mnist1d", "cifar10", "cifar100", "imagenet", "teacher")


def test_unknown_dataset_names_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        load_dataset("svhn")
    assert "'svhn'" in str(err.value) and "'cifar10'" in str(err.value) and "dataset" in str(err.value)


def test_unknown_option_names_the_option_and_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        load_dataset("teacher", n_sample=10)
    msg = str(err.value)
    assert "n_sample" in msg and "n_samples" in msg and "teacher_sparsity" in msg
    with pytest.raises(ConfigError, match="allowed options: none"):
        load_dataset("mnist1d", augment=True)


def test_options_are_listed_with_defaults():
    assert dataset_options("cifar10") == {"augment": None}
    assert dataset_options("digits") == {"test_fraction": 0.2}
    assert set(dataset_options("imagenet")) == {"image_size", "resize_size", "augment"}
