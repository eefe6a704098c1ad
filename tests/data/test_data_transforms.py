"""Transforms: exact results on tiny images, per-sample randomness, reproducibility."""
import pytest
import torch

from sparsetrain.data import (CenterCrop, Compose, Normalize, RandomCrop, RandomHorizontalFlip, RandomResizedCrop,
                              Resize, ToFloat)
from sparsetrain.rng import generator


def _image(n=1, c=2, h=4, w=5):
    return torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)


def test_flip_mirrors_exactly_the_chosen_samples():
    x = _image(n=64)
    out = RandomHorizontalFlip(0.5)(x, generator(3))
    flipped = [bool(torch.equal(out[i], x[i].flip(-1))) for i in range(64)]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54
    assert torch.equal(RandomHorizontalFlip(1.0)(x[0], generator(0)), x[0].flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(x, generator(0)), x)


def test_random_crop_is_a_window_of_the_padded_image():
    x = _image(n=16)
    fill = (-1.0, -2.0)
    out = RandomCrop((4, 5), padding=2, fill=fill)(x, generator(5))
    assert out.shape == x.shape
    padded = torch.empty(16, 2, 8, 9)
    padded[:, 0], padded[:, 1] = fill
    padded[:, :, 2:6, 2:7] = x
    offsets = set()
    for i in range(16):
        matches = [(t, l) for t in range(5) for l in range(5)
                   if torch.equal(padded[i, :, t:t + 4, l:l + 5], out[i])]
        assert matches, f"sample {i} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1  # per-sample offsets, not one for the batch


def test_random_crop_without_padding_at_full_size_is_identity():
    x = _image(n=3)
    assert torch.equal(RandomCrop((4, 5))(x, generator(0)), x)


def test_random_transforms_are_pure_functions_of_the_generator():
    x = torch.randn(8, 3, 12, 12)
    t = Compose(RandomCrop(12, padding=3), RandomHorizontalFlip(), RandomResizedCrop(6))
    assert torch.equal(t(x, generator(1, 2)), t(x, generator(1, 2)))
    assert not torch.equal(t(x, generator(1, 2)), t(x, generator(1, 3)))


def test_random_transform_without_generator_is_refused():
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        RandomHorizontalFlip()(_image(), None)


def test_normalize_and_to_float():
    x = torch.tensor([[[0, 255]], [[51, 102]]], dtype=torch.uint8)  # (2, 1, 2)
    out = Normalize((0.5, 0.2), (0.5, 0.1))(ToFloat()(x))
    expected = torch.tensor([[[-1.0, 1.0]], [[0.0, 2.0]]])
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="floating-point"):
        Normalize((0.5,), (0.5,))(x)


def test_resize_shorter_side_and_center_crop():
    x = torch.rand(3, 20, 40)
    r = Resize(10)(x)
    assert r.shape == (3, 10, 20)
    constant = torch.full((3, 20, 40), 0.25)
    torch.testing.assert_close(Resize(10)(constant), torch.full((3, 10, 20), 0.25))
    c = CenterCrop(4)(_image(c=1, h=6, w=8)[0])
    assert torch.equal(c, _image(c=1, h=6, w=8)[0, :, 1:5, 2:6])


def test_random_resized_crop_window_fits_and_output_has_size():
    t = RandomResizedCrop(7, scale=(0.2, 0.5))
    g = generator(9)
    for _ in range(50):
        top, left, h, w = t.window(30, 40, g)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
        assert 0.1 * 1200 < h * w <= 0.6 * 1200
    assert t(torch.rand(2, 3, 30, 40), generator(0)).shape == (2, 3, 7, 7)
    # full-scale crop of a square image with ratio 1 keeps the whole image
    x = torch.rand(1, 8, 8)
    torch.testing.assert_close(RandomResizedCrop(8, scale=(1, 1), ratio=(1, 1))(x, generator(0)), x)
