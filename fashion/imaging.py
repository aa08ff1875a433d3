"""Turn an uploaded image file into the model's 28 x 28 uint8 input, safely.

Policy (also in the README):

* Formats: PNG, JPEG, GIF, BMP, WebP and TIFF only. The decoder itself is told
  which formats it may use (``Image.open(..., formats=...)``); a file's name or
  Content-Type never chooses the parser.
* Size: at most :data:`MAX_PIXELS` pixels (checked from the header, before any
  pixel is decoded) and a decompression-bomb warning is an error.
* Colour: converted to 8-bit grayscale; transparent pixels become black.
* Shape: the longest side is scaled to 28 pixels (aspect ratio kept, Lanczos),
  the image is centred on a black 28 x 28 canvas.
* Polarity: Fashion-MNIST shows a light object on a dark background. When the
  image's border is mostly light (mean of the outermost pixels above 127), the
  image is taken to be a dark object on a light background (a product photo)
  and inverted before fitting. Pass ``invert=False`` to turn this off.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from fashion.contract import IMAGE_SIZE

ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# Pillow's own bomb limit is ~89 MP; a 28 x 28 classifier never needs more than 4 MP.
MAX_PIXELS = 4_000_000


class ImageError(ValueError):
    """An input image was refused; ``status`` is the HTTP code that fits."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _open(data: bytes):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("empty image file", 400)
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})", 415) from None
    width, height = image.size
    if width * height > MAX_PIXELS or width <= 0 or height <= 0:
        raise ImageError(f"image is {width} x {height} pixels; at most {MAX_PIXELS:,} pixels are accepted", 413)
    return image


def _to_gray(image) -> np.ndarray:
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _fit(gray: np.ndarray) -> np.ndarray:
    from PIL import Image

    height, width = gray.shape
    if (height, width) == (IMAGE_SIZE, IMAGE_SIZE):
        return gray
    scale = IMAGE_SIZE / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(Image.fromarray(gray).resize((new_w, new_h), Image.Resampling.LANCZOS))
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    top, left = (IMAGE_SIZE - new_h) // 2, (IMAGE_SIZE - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def has_light_background(gray: np.ndarray) -> bool:
    """True when the outermost ring of pixels is mostly light."""
    ring = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(ring.mean()) > 127


def decode_image(data: bytes, invert: bool | None = None) -> np.ndarray:
    """Decode one image file into the model's ``uint8[28, 28]`` pixels.

    Args:
        data: the file's bytes.
        invert: ``None`` decides from the border (see module docs); ``True``/``False`` force it.

    Returns:
        ``uint8`` array of shape ``(28, 28)``, light object on dark background.

    Raises:
        ImageError: empty, unsupported, too large, truncated or corrupt input.
    """
    from PIL import Image

    image = _open(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            gray = _to_gray(image)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}", 413) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"the image could not be decoded ({exc}); it is truncated or corrupt", 422) from None
    if invert if invert is not None else has_light_background(gray):
        gray = 255 - gray
    return _fit(gray)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8[28, 28]`` image (for clients, tests and examples)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
