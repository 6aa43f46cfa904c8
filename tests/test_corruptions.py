"""Corrupted test sets: shapes kept, deterministic, formulas as MedMNIST-C's."""

from __future__ import annotations

import pytest
import torch

from medsoup.core.corruptions import CORRUPTIONS, corrupt, corrupted
from tests.conftest import tiny


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_keeps_shape_and_is_deterministic(name):
    images = tiny("retinamnist", n=8).splits["test"].images
    out = corrupt(images, name, 3, seed=1)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, corrupt(images, name, 3, seed=1))
    assert not torch.equal(out, images)


def test_formulas():
    images = torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    assert torch.equal(corrupt(images, "brightness_down", 5), torch.full_like(images, 100))
    images[:, :, :, :4] = 100                     # mean 150; contrast 0.4 -> 150 +- 20
    out = corrupt(images, "contrast_down", 5)
    assert set(out.unique().tolist()) == {130, 170}
    assert torch.equal(corrupt(images, "gaussian_blur", 1)[:, :, :, 0], images[:, :, :, 0])


def test_corrupted_replaces_only_the_split():
    data = tiny(n=8)
    out = corrupted(data, "gaussian_noise", 2)
    assert out.splits["train"] is data.splits["train"]
    assert torch.equal(out.splits["test"].labels, data.splits["test"].labels)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(data.splits["test"].images, "fog")
    with pytest.raises(ValueError, match="severity"):
        corrupt(data.splits["test"].images, "pixelate", 6)


def test_corrupted_sets_are_made_once_per_images_and_corruption():
    data = tiny(n=8)
    first = corrupted(data, "gaussian_noise", 2)
    assert corrupted(data, "gaussian_noise", 2) is first
    assert corrupted(data, "gaussian_noise", 3) is not first and corrupted(data, "pixelate", 2) is not first
    assert torch.equal(first.splits["test"].images, corrupt(data.splits["test"].images, "gaussian_noise", 2))
    other = tiny(n=8)  # equal content, other tensors: made anew
    assert corrupted(other, "gaussian_noise", 2) is not first
