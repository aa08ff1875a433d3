"""The early exit for uploads already in Fashion-MNIST's format (``fashion.imaging.already_framed``): it is taken
for a plain 28 x 28 grayscale PNG, and whenever it is taken it gives exactly the pixels of the full path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from fashion import imaging
from fashion.samples import sample_paths


def png(gray: np.ndarray, mode: str = "L", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).convert(mode).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def full_path(data: bytes, monkeypatch, **options) -> np.ndarray:
    """``decode_image`` with the early exit turned off: every step of the full path runs."""
    with monkeypatch.context() as patch:
        patch.setattr(imaging, "already_framed", lambda image, invert=None: None)
        return imaging.decode_image(data, **options)


def taken(data: bytes, invert: bool | None = None) -> bool:
    image = Image.open(io.BytesIO(data))
    image.load()
    return imaging.already_framed(image, invert) is not None


def samples() -> list[np.ndarray]:
    return [np.asarray(Image.open(path).convert("L")) for path in sample_paths()]


def test_every_bundled_sample_takes_the_early_exit_with_the_full_paths_pixels(monkeypatch):
    for path in sample_paths():
        data = path.read_bytes()
        assert taken(data), path.name
        for invert in (None, False):
            assert np.array_equal(imaging.decode_image(data, invert=invert), full_path(data, monkeypatch,
                                                                                        invert=invert)), path.name


def shifted(gray: np.ndarray) -> np.ndarray:
    """The object shrunk into a corner: the full path reframes it."""
    small = np.asarray(Image.fromarray(gray).resize((14, 14)))
    out = np.zeros_like(gray)
    out[:14, :14] = small
    return out


def with_exif_turn(gray: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[imaging.EXIF_ORIENTATION] = 6
    return png(gray, exif=exif.tobytes())


def with_text(gray: np.ndarray) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a note")
    return png(gray, pnginfo=info)


VARIANTS = {
    "inverted (light background)": lambda g: png(255 - g),
    "grey background": lambda g: png(np.maximum(g, 60)),
    "faint border": lambda g: png(np.pad(g[1:-1, 1:-1], 1, constant_values=20)),
    "shrunk into a corner": lambda g: png(shifted(g)),
    "EXIF orientation": with_exif_turn,
    "a text chunk": with_text,
    "colour-key transparency": lambda g: png(g, transparency=0),
    "RGB": lambda g: png(g, mode="RGB"),
    "16-bit": lambda g: png(g.astype(np.uint16) * 257, mode="I;16"),
    "gray with alpha": lambda g: png(g, mode="LA"),
    "blank": lambda g: png(np.zeros_like(g)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_whatever_the_image_decoding_gives_the_full_paths_pixels(variant, monkeypatch):
    for gray in samples():
        data = VARIANTS[variant](gray)
        for invert in (None, False, True):
            assert np.array_equal(imaging.decode_image(data, invert=invert),
                                  full_path(data, monkeypatch, invert=invert)), (variant, invert)


@pytest.mark.parametrize("variant", ["inverted (light background)", "grey background", "faint border",
                                     "shrunk into a corner", "EXIF orientation", "a text chunk",
                                     "colour-key transparency", "RGB", "16-bit", "gray with alpha"])
def test_images_the_full_path_would_change_or_might_read_otherwise_take_the_full_path(variant):
    assert not any(taken(VARIANTS[variant](gray)) for gray in samples())


def test_an_inversion_asked_for_takes_the_full_path():
    assert not taken(sample_paths()[0].read_bytes(), invert=True)
