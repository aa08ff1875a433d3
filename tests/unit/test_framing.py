"""Dataset-style framing of uploads (``fashion.imaging``), on synthetic images with known answers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fashion.imaging import decode_image, frame_like_dataset, level_light, sharpen, sharpen_kernel, tilt_of

BLOCK = np.zeros((28, 28), dtype=np.uint8)
BLOCK[:, 7:21] = 255  # a 60 x 30 object framed: longest edge 28 rows, short edge 14 columns, centred


def encode(rgb: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    """Image file bytes of an ``uint8[H, W, 3]`` (or ``[H, W]``) array."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def canvas(height: int, width: int, colour, obj_colour=(0, 0, 0), top: int = 40, left: int = 50) -> np.ndarray:
    """A 60 x 30 solid object of ``obj_colour`` pasted at (top, left) on a background of ``colour``."""
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = colour
    rgb[top:top + 60, left:left + 30] = obj_colour
    return rgb


@pytest.mark.parametrize("background", [(255, 255, 255), (128, 128, 128), (200, 60, 40), (240, 240, 200)])
def test_margins_of_any_light_colour_are_trimmed(background):
    """A dark object on a light margin of a known colour comes out as the object alone, filling the frame."""
    assert np.array_equal(decode_image(encode(canvas(200, 160, background))), BLOCK)


@pytest.mark.parametrize("top,left", [(0, 0), (10, 120), (139, 129), (70, 5)])
def test_placement_does_not_matter(top, left):
    """Off-centre or at the very edge, the object is found and centred."""
    assert np.array_equal(decode_image(encode(canvas(200, 160, (255, 255, 255), top=top, left=left))), BLOCK)


def test_light_object_on_dark_background_is_not_negated():
    """Polarity as before: a dark border means the image is already light-on-dark."""
    dark = canvas(120, 300, (0, 0, 0), obj_colour=(255, 255, 255))
    assert np.array_equal(decode_image(encode(dark)), BLOCK)
    dark_grey = canvas(120, 300, (40, 40, 40), obj_colour=(255, 255, 255))
    assert np.array_equal(decode_image(encode(dark_grey)), BLOCK)


def test_noise_and_jpeg_ringing_do_not_stop_the_trim():
    """Sensor noise on the margin and JPEG artefacts keep the object's box within a pixel."""
    rng = np.random.default_rng(0)
    clean = canvas(300, 240, (255, 255, 255), top=100, left=90)
    noisy = np.clip(clean.astype(np.int16) + rng.normal(0, 4, clean.shape).round().astype(np.int16), 0, 255)
    for data in (encode(noisy.astype(np.uint8)), encode(clean, "JPEG", quality=60)):
        framed = decode_image(data)
        rows, cols = np.flatnonzero(framed.max(1) > 127), np.flatnonzero(framed.max(0) > 127)
        assert (rows[0], rows[-1]) == (0, 27)
        assert abs(cols[0] - 7) <= 1 and abs(cols[-1] - 20) <= 1
        assert np.abs(framed.astype(int) - BLOCK).mean() < 12


def test_object_size_is_normalised():
    """The same object at 30% or 100% of its frame gives the same 28 x 28 image."""
    small = canvas(200, 200, (255, 255, 255), top=70, left=85)
    full = np.zeros((60, 30, 3), dtype=np.uint8)
    full_on_margin = np.pad(full, ((2, 2), (2, 2), (0, 0)), constant_values=255)
    assert np.array_equal(decode_image(encode(small)), decode_image(encode(full_on_margin)))


def test_blank_and_constant_uploads_come_out_black():
    """Nothing to trim to: a uniform picture of any colour, or a single pixel, is all background."""
    for colour in ((255, 255, 255), (128, 128, 128), (0, 0, 0)):
        assert not decode_image(encode(np.full((50, 80, 3), colour, dtype=np.uint8))).any()
    assert not decode_image(encode(np.full((1, 1), 128, dtype=np.uint8))).any()


def garment_on_black() -> np.ndarray:
    """A faint, textured object on a black background with some dark noise: the dataset's own format."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 8, (28, 28), dtype=np.uint8)
    pixels[:, 6:22] = rng.integers(60, 121, (28, 16), dtype=np.uint8)  # spanning the frame, as in the dataset
    return pixels


def test_28_by_28_uploads_are_taken_as_framed():
    """A Fashion-MNIST-sized upload on black is the dataset's own format: both policies pass it through."""
    pixels = garment_on_black()
    assert np.array_equal(decode_image(encode(pixels)), pixels)
    assert np.array_equal(decode_image(encode(pixels), framing="legacy"), pixels)


def test_legacy_framing_scales_the_whole_canvas():
    """The switch back: with ``legacy`` the margin shrinks the object (200 px high canvas -> 60 px is 8 rows)."""
    framed = decode_image(encode(canvas(200, 200, (255, 255, 255), top=70, left=85)), framing="legacy")
    rows = np.flatnonzero(framed.max(1) > 127)
    assert 7 <= len(rows) <= 10


def test_unknown_framing_is_refused():
    with pytest.raises(ValueError, match="framing"):
        decode_image(encode(canvas(100, 100, (255, 255, 255), top=0, left=0)), framing="square")


def test_frame_like_dataset_forced_polarity():
    """``invert=False`` keeps a light background light, mapped to black only by the background stretch."""
    rgb = canvas(200, 160, (255, 255, 255))
    assert np.array_equal(frame_like_dataset(rgb, invert=True), BLOCK)
    assert not frame_like_dataset(rgb, invert=False).any()


def test_sharpen_kernel_is_the_dataset_operator():
    """Radius 1, sigma 1: a negated 3 x 3 Gaussian whose centre is twice the Gaussian's sum, normalised to 1."""
    kernel = sharpen_kernel()
    total = 1 + 4 * np.exp(-0.5) + 4 * np.exp(-1.0)  # the unnormalised 3 x 3 Gaussian's sum
    assert kernel.sum() == pytest.approx(1.0)
    assert kernel[1, 1] == pytest.approx(2 * total / (total + 1))  # 1.6609
    assert kernel[0, 1] == pytest.approx(-np.exp(-0.5) / (total + 1)) and kernel[0, 0] == pytest.approx(
        -np.exp(-1.0) / (total + 1))


def test_sharpen_on_known_images():
    """A flat image is unchanged (edges included); one bright pixel on grey gets the kernel's weights."""
    flat = np.full((6, 9), 77, dtype=np.uint8)
    assert np.array_equal(np.asarray(sharpen(Image.fromarray(flat))), flat)
    spot = np.full((5, 5), 50, dtype=np.uint8)
    spot[2, 2] = 100
    sharp = np.asarray(sharpen(Image.fromarray(spot)))
    assert (sharp[2, 2], sharp[1, 2], sharp[1, 1], sharp[0, 0]) == (133, 45, 47, 50)  # 50 + 50 * weight
    rgb = np.asarray(sharpen(Image.fromarray(np.stack([spot] * 3, axis=-1))))
    assert all(np.array_equal(rgb[..., c], sharp) for c in range(3))


def test_a_graded_object_keeps_its_levels():
    """A two-tone object (dark rim, mid-grey core) on white: the core's level survives trim, resize and sharpen."""
    rgb = np.full((300, 200, 3), 255, dtype=np.uint8)
    rgb[60:240, 50:140] = 0  # 180 x 90: scaled by 28 / 180
    rgb[105:195, 72:118] = 128  # the middle half of it (90 x 46 px) in mid grey
    framed = decode_image(encode(rgb))
    assert np.array_equal(framed[:, :7], np.zeros((28, 7), np.uint8))  # 14 columns wide, centred: 7 black each side
    assert abs(int(framed[14, 14]) - 127) <= 2  # negated mid grey
    assert framed[2, 10] >= 250 and framed[14, 8] >= 250  # the dark rim, negated (less a Lanczos ripple)


def test_inverted_brightened_or_faded_28_by_28_images_are_brought_back():
    """A negative, a washed-out copy (background lifted to grey) and a faded copy come back as light on black."""
    pixels = garment_on_black()
    pixels[:, 6:22] += 135  # 195-255: the dataset's objects reach white
    original = pixels.astype(np.float32)
    mean = original.mean()
    for changed in (255 - original, original * 0.6 + 100, (original - mean) * 0.2 + mean):
        restored = decode_image(encode(np.round(changed).astype(np.uint8))).astype(np.float32)
        assert np.abs(restored - original).mean() < 12, changed[0, :4]


def gradient(rgb: np.ndarray, darkest: float = 0.7, axis: int = 1) -> np.ndarray:
    """``rgb`` lit unevenly: full light on one side falling linearly to ``darkest`` on the other."""
    ramp = np.linspace(1.0, darkest, rgb.shape[axis])
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.round(rgb * ramp.reshape(shape)).astype(np.uint8)


@pytest.mark.parametrize("axis", [0, 1])
def test_uneven_light_is_levelled_before_trimming(axis):
    """A 30% light fall-off across a white backdrop: the object is still trimmed tight and negated."""
    plain = decode_image(encode(canvas(200, 160, (255, 255, 255))))
    uneven = decode_image(encode(gradient(canvas(200, 160, (255, 255, 255)), axis=axis)))
    assert np.abs(uneven.astype(int) - plain).mean() < 8
    assert not uneven[:, :5].any() and not uneven[:, 23:].any()  # the margins beside the object stay black


def test_even_light_takes_the_plain_path():
    """A uniform backdrop is left as it is: no plane to level (the framing of every even photo is unchanged)."""
    rgb = canvas(200, 160, (255, 255, 255))
    assert level_light(rgb) is rgb
    assert level_light(gradient(rgb)) is not rgb


def tilted(degrees: float) -> np.ndarray:
    """A dark 120 x 50 object with a crossbar on white, turned ``degrees`` counter-clockwise."""
    rgb = np.full((240, 200, 3), 255, dtype=np.uint8)
    rgb[60:180, 75:125] = 0
    rgb[60:75, 55:145] = 0
    return np.asarray(Image.fromarray(rgb).rotate(degrees, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255)))


@pytest.mark.parametrize("degrees", [-15, -8, 8, 15])
def test_a_tilted_object_is_turned_upright(degrees):
    """Tilts up to 15 degrees: the object is found tilted and framed as the upright one, within resampling."""
    upright = decode_image(encode(tilted(0))).astype(int)
    assert tilt_of(tilted(degrees).min(axis=2) < 128) == pytest.approx(-degrees, abs=1)
    assert np.abs(decode_image(encode(tilted(degrees))).astype(int) - upright).mean() < 12


def test_an_upright_object_is_not_turned():
    assert tilt_of(tilted(0).min(axis=2) < 128) == 0
    assert tilt_of(BLOCK > 0) == 0


def test_a_faint_object_gets_the_datasets_contrast():
    """A light-grey garment on white is stretched until its darkest part is white once negated."""
    faint = canvas(200, 160, (255, 255, 255), obj_colour=(200, 200, 200))
    assert np.array_equal(decode_image(encode(faint)), BLOCK)


def test_a_shrunken_28_by_28_object_is_framed_again():
    """An object shrunk inside its 28 x 28 frame (MNIST-C's "scale") is trimmed and resized like a photo."""
    full = np.zeros((28, 28), dtype=np.uint8)
    full[:, 7:21] = 255
    shrunk = np.asarray(Image.fromarray(full).resize((14, 14), Image.Resampling.BOX))
    small = np.zeros((28, 28), dtype=np.uint8)
    small[7:21, 7:21] = shrunk
    framed = decode_image(encode(small))
    assert len(np.flatnonzero(framed.max(1) > 127)) == 28  # the object spans the frame again, as it did
    assert np.abs(framed.astype(int) - BLOCK).mean() < 24  # within the blur of a 2x upscale
