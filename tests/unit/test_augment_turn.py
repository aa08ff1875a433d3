"""The training augmentation's turn (rotation and shear), shared by both frameworks through training.loop."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from training.config import AugmentConfig, get_preset
from training.loop import augment_batch, augment_for_epoch, iterate_batches, turn_images

pytestmark = pytest.mark.unit


def bar() -> np.ndarray:
    image = np.zeros((1, 28, 28), np.float32)
    image[0, 13:15, 4:24] = 1.0  # a horizontal bar through the centre
    return image


def test_a_quarter_turn_makes_a_horizontal_bar_vertical():
    turned = turn_images(bar(), np.array([90.0]), np.array([0.0]))[0]
    assert turned[4:24, 13:15].mean() > 0.95 and turned[13:15, :10].max() < 0.05


def test_rotation_matches_pillow_clockwise():
    rng = np.random.default_rng(0)
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 9:19] = rng.integers(100, 256, (16, 10))
    ours = turn_images(pixels[None].astype(np.float32), np.array([20.0]), np.array([0.0]))[0]
    pillow = np.asarray(Image.fromarray(pixels).rotate(-20, Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(ours - pillow).mean() < 4  # the same turn; the two differ only in sub-pixel rounding


def test_shear_slides_the_top_one_way_and_the_bottom_the_other():
    image = np.zeros((1, 28, 28), np.float32)
    image[0, 4:24, 13:15] = 1.0  # a vertical bar
    sheared = turn_images(image, np.array([0.0]), np.array([30.0]))[0]
    columns = np.arange(28)
    top, bottom = sheared[5], sheared[22]
    assert (top * columns).sum() / top.sum() < 10 < 17 < (bottom * columns).sum() / bottom.sum()


def test_no_turn_leaves_the_batch_and_the_random_stream_alone():
    images = np.repeat(bar(), 8, axis=0)
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    assert augment_batch(images, AugmentConfig(max_shift=1, flip=True), rng).shape == images.shape
    augment_batch(images, AugmentConfig(max_shift=1, flip=True, max_rotate=0.0), twin)
    assert rng.random() == twin.random()  # presets without a turn draw exactly what they drew before
    assert augment_batch(images, AugmentConfig(), rng) is images


def test_turned_share_and_bounds():
    images = np.repeat(bar(), 400, axis=0)
    out = augment_batch(images, AugmentConfig(max_rotate=15.0, affine_share=0.5), np.random.default_rng(1))
    unchanged = np.all(out == images, axis=(1, 2))
    assert 0.4 < unchanged.mean() < 0.6
    # Within 15 degrees the bar's ends never leave the rows around the centre by more than tan(15) of its half.
    rows = np.nonzero(out[~unchanged].max(axis=0) > 0.5)[0]
    assert rows.min() >= 13 - 4 and rows.max() <= 14 + 4


def test_the_same_seed_gives_the_same_turned_batches():
    images = np.random.default_rng(0).random((64, 28, 28)).astype(np.float32)
    labels = np.arange(64) % 10
    config = AugmentConfig(max_shift=1, flip=True, max_rotate=20.0, max_shear=15.0)
    first = list(iterate_batches(images, labels, 16, np.random.default_rng(5), config))
    second = list(iterate_batches(images, labels, 16, np.random.default_rng(5), config))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[0][0], images[:16])


def test_the_last_plain_epochs_leave_the_turn_out_and_keep_the_rest():
    turned = AugmentConfig(max_shift=1, flip=True, max_rotate=25.0, max_shear=25.0, plain_epochs=2)
    config = dataclasses.replace(get_preset("best", epochs=5), augment=turned)
    assert [augment_for_epoch(config, e).max_rotate for e in range(1, 6)] == [25.0, 25.0, 25.0, 0.0, 0.0]
    assert augment_for_epoch(config, 5) == AugmentConfig(max_shift=1, flip=True, plain_epochs=2)
