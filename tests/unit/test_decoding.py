"""Decoding that respects the file (``fashion.imaging``): EXIF orientation, transparency, bit depth, colour.

Each case is a constructed file whose right answer is known: the same picture stored plainly.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from fashion.imaging import decode_image

# How a camera stores a picture for each EXIF orientation: the inverse of what a viewer does to show it
# (Pillow's ImageOps.exif_transpose does the showing; 2, 3, 4, 5 and 7 are their own inverses).
STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
          7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
LOSSLESS = {"PNG": {}, "TIFF": {}, "WEBP": {"lossless": True}}


def photo() -> np.ndarray:
    """A dark, asymmetric object (an L with a notch) on white, taller than wide: every turn or mirror shows."""
    rgb = np.full((160, 120, 3), 255, dtype=np.uint8)
    rgb[20:140, 30:55] = 0
    rgb[115:140, 55:95] = 60
    rgb[30:45, 42:50] = 200
    return rgb


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def with_orientation(rgb: np.ndarray, orientation: int, fmt: str, **options) -> bytes:
    """The file a camera writes: pixels stored turned, plus the tag that says how to show them."""
    image = Image.fromarray(rgb)
    if STORED[orientation] is not None:
        image = image.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(image, fmt, exif=exif.tobytes(), **options)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", sorted(LOSSLESS))
def test_every_exif_orientation_is_applied(fmt, orientation):
    """All eight orientations, in every lossless format that carries EXIF: the picture as it is shown."""
    plain = decode_image(save(Image.fromarray(photo()), "PNG"))
    assert np.array_equal(decode_image(with_orientation(photo(), orientation, fmt, **LOSSLESS[fmt])), plain)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_phone_jpeg_stored_sideways_is_turned(orientation):
    """A JPEG (lossy) stored turned: within JPEG noise of the plain picture, far from the unturned one."""
    plain = decode_image(save(Image.fromarray(photo()), "JPEG", quality=95)).astype(int)
    turned = decode_image(with_orientation(photo(), orientation, "JPEG", quality=95)).astype(int)
    assert np.abs(turned - plain).mean() < 4


def test_a_broken_exif_block_leaves_the_pixels_as_stored():
    """An EXIF block Pillow cannot read is no reason to refuse a photo."""
    data = save(Image.fromarray(photo()), "PNG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert np.array_equal(decode_image(data), decode_image(save(Image.fromarray(photo()), "PNG")))


HIDDEN = {"black": (0, 0, 0), "white": (255, 255, 255), "red": (220, 20, 30), "green": (0, 255, 0)}


def cut_out(hidden: tuple[int, int, int] | None) -> Image.Image:
    """:func:`photo` with its white backdrop made transparent, the transparent pixels holding ``hidden``."""
    rgb = photo()
    opaque = (rgb < 255).any(axis=2)
    if hidden is None:  # noise: a different colour in every transparent pixel
        noise = np.random.default_rng(0).integers(0, 256, rgb.shape, dtype=np.uint8)
        rgb[~opaque] = noise[~opaque]
    else:
        rgb[~opaque] = hidden
    return Image.fromarray(np.dstack([rgb, np.where(opaque, 255, 0).astype(np.uint8)]))


@pytest.mark.parametrize("hidden", [*HIDDEN, "noise"])
def test_transparency_is_background_whatever_colour_it_hides(hidden):
    """A cut-out garment on a transparent background is framed as the same garment on white."""
    plain = decode_image(save(Image.fromarray(photo()), "PNG"))
    image = cut_out(HIDDEN.get(hidden))
    assert np.array_equal(decode_image(save(image, "PNG")), plain)
    assert np.array_equal(decode_image(save(image, "WEBP", lossless=True, exact=True)), plain)


def test_transparent_28_by_28_upload():
    """At the dataset's own size too: a dark garment on transparent black comes out light on black."""
    garment = np.zeros((28, 28), dtype=np.uint8)
    garment[0:28, 9:19] = 200  # spanning the frame, as every dataset object does
    rgba = np.dstack([255 - garment] * 3 + [np.where(garment > 0, 255, 0).astype(np.uint8)])
    rgba[garment == 0, :3] = 0  # the hidden colour a plain alpha composite shows: black, like the garment
    assert np.array_equal(decode_image(save(Image.fromarray(rgba), "PNG")), garment)


def test_gray_with_alpha_and_palette_and_colour_key_transparency():
    """LA, a palette with a transparent index, and an RGB colour key: the same as the opaque picture."""
    plain = decode_image(save(Image.fromarray(photo()), "PNG"))
    la = cut_out((0, 0, 0)).convert("LA")
    assert np.array_equal(decode_image(save(la, "PNG")), plain)
    palette = Image.fromarray(photo()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    white = palette.getpixel((0, 0))
    recoloured = palette.copy()
    recoloured.putpalette([*palette.getpalette()[:3 * white], 0, 0, 0, *palette.getpalette()[3 * white + 3:]])
    assert np.array_equal(decode_image(save(recoloured, "PNG", transparency=white)), plain)
    assert np.array_equal(decode_image(save(recoloured, "GIF", transparency=white)), plain)
    keyed = photo()
    keyed[(keyed == 255).all(axis=2)] = (0, 0, 1)  # the key colour, near black: shown as background anyway
    assert np.array_equal(decode_image(save(Image.fromarray(keyed), "PNG", transparency=(0, 0, 1))), plain)


def sixteen_bit(gray8: np.ndarray, fmt: str) -> bytes:
    """A 16-bit grayscale file whose samples are the 8-bit ones at full 16-bit scale (x 257)."""
    return save(Image.fromarray(gray8.astype(np.uint16) * 257), fmt)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_not_clipped(fmt):
    """A 16-bit file decodes to what the same picture in 8 bits does (clipping would turn it white)."""
    gray = np.asarray(Image.fromarray(photo()).convert("L"))
    assert np.array_equal(decode_image(sixteen_bit(gray, fmt)), decode_image(save(Image.fromarray(gray), "PNG")))
    small = np.zeros((28, 28), dtype=np.uint8)
    small[:, 8:20] = np.arange(28, dtype=np.uint8)[:, None] * 9
    assert np.array_equal(decode_image(sixteen_bit(small, fmt)), small)


def test_32_bit_integer_and_float_images_are_scaled():
    """Pillow's ``I`` and ``F`` modes: 16-bit-range integers and 0-1 floats map onto 0-255."""
    small = np.zeros((28, 28), dtype=np.uint8)
    small[:, 8:20] = 180
    as_int = Image.fromarray(small.astype(np.int32) * 257, mode="I")
    as_float = Image.fromarray(small.astype(np.float32) / 255, mode="F")
    assert np.array_equal(decode_image(save(as_int, "TIFF")), small)
    assert np.array_equal(decode_image(save(as_float, "TIFF")), small)


def test_cmyk_and_icc_profiles_keep_working():
    """A CMYK JPEG and a PNG carrying an sRGB profile decode like the plain picture."""
    plain = decode_image(save(Image.fromarray(photo()), "PNG")).astype(int)
    cmyk = decode_image(save(Image.fromarray(photo()).convert("CMYK"), "JPEG", quality=95)).astype(int)
    assert np.abs(cmyk - plain).mean() < 4
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = save(Image.fromarray(photo()), "PNG", icc_profile=profile)
    assert np.array_equal(decode_image(tagged), plain)
