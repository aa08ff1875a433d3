"""Turn an uploaded image file into the model's 28 x 28 uint8 input, safely.

Policy (also in docs/serving.md, "Input policy"):

* Formats: PNG, JPEG, GIF, BMP, WebP and TIFF only. The decoder itself is told
  which formats it may use (``Image.open(..., formats=...)``); a file's name or
  Content-Type never chooses the parser.
* Size: at most :data:`MAX_PIXELS` pixels (checked from the header, before any
  pixel is decoded) and a decompression-bomb warning is an error. Work that
  grows with a header field rather than with the pixels is capped too: at most
  :data:`MAX_JPEG_SCANS` JPEG scans and :data:`MAX_TIFF_CHUNKS` TIFF strips or
  tiles. Only the first frame of an animated or multi-page file is decoded.
* Errors: :class:`ImageError` is the only exception that escapes, whatever the
  bytes (``tests/fuzz_imaging.py`` fuzzes this).
* Decoding respects the file: the EXIF orientation is applied (:func:`orient`), 16-bit and other
  high-bit-depth images are scaled to 8 bits, not clipped (:func:`to_8bit`), and transparency is a mask
  (:func:`split_alpha`): the transparent area is background, whatever colour its pixels hold; it stands for a
  white backdrop (a cut-out product photo), or black with ``invert=False``, and the object is framed from it.
* Colour: converted to 8-bit grayscale (CMYK and palettes through Pillow's conversions).
* Shape: the longest side is scaled to 28 pixels (aspect ratio kept, Lanczos),
  the image is centred on a black 28 x 28 canvas.
* Polarity: Fashion-MNIST shows a light object on a dark background. When the
  image's border is mostly light (mean of the outermost pixels above 127), the
  image is taken to be a dark object on a light background (a product photo)
  and inverted before fitting. Pass ``invert=False`` to turn this off.
* Framing (``framing=``, see docs/inputs.md): ``"dataset"`` (the default) follows
  Fashion-MNIST's own conversion of product photos: trim the margins whose colour
  is within 5% of the corners' colour, resize the longest edge to 28, sharpen
  (the 3 x 3 Gaussian operator of radius and sigma 1.0, :func:`sharpen_kernel`), pad the short edge
  to 28 centred, negate (when the object is darker than the background), grayscale; then the
  background level is mapped to black (a step of ours, so grey and coloured
  backgrounds look like the dataset's white one). ``"legacy"`` is the earlier
  policy: scale the whole canvas, longest side to 28, onto black. Both take a
  28 x 28 upload as already framed: only the polarity rule applies to it.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np

from fashion.contract import IMAGE_SIZE

ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# Far below Pillow's own bomb limit: a 28 x 28 classifier never needs more than 4 MP.
MAX_PIXELS = 4_000_000
# libjpeg decodes every block of the frame once per scan, so scans multiply the work of a tiny file: thousands of
# empty scans over a large frame keep a decoder busy for seconds (tests/integration/test_imaging_bombs.py builds
# one). Encoders write about 10; libtiff refuses more than 100 in a JPEG-in-TIFF strip
# (LIBTIFF_JPEG_MAX_ALLOWED_SCAN_NUMBER), so do we.
MAX_JPEG_SCANS = 100
# Pillow builds a Python object per TIFF strip or tile while *opening* the file: a million two-byte strip offsets
# cost seconds and hundreds of megabytes before any size check could run (tests/integration/test_imaging_bombs.py).
# 16,384 covers a 4 MP image in the smallest tiles the TIFF spec allows (16 x 16 pixels: 15,625 tiles).
MAX_TIFF_CHUNKS = 16_384
_TIFF_STRIP_OFFSETS, _TIFF_TILE_OFFSETS = 273, 324
FRAMINGS = ("dataset", "legacy")
DEFAULT_FRAMING = "dataset"
# Fashion-MNIST's conversion trims edges "within 5% of the maximum intensity" of the corner colour.
TRIM_TOLERANCE = 0.05 * 255
# A row or column counts as object only when this share of its pixels (at least 2) differs from the background
# after a 3 x 3 median: isolated noise pixels and JPEG ringing specks do not stop the trim.
TRIM_MIN_RUN = 0.02
# Trimming decides on a copy at most this large (the crop is then taken from the full image): a 1,000 px photo
# needs no more to find its margins, and the median filter costs grow with pixels.
TRIM_PROBE_SIZE = 256
# Uneven light: a plane per channel is fitted to the outer LIGHT_BORDER of each side of the picture; the light
# counts as uneven (and is levelled) only when that plane spans more than UNEVEN_LEVELS across the picture, so a
# photo on an even backdrop takes exactly the path it took before. Measured in docs/inputs.md ("Uneven light").
LIGHT_BORDER = 0.04
UNEVEN_LEVELS = TRIM_TOLERANCE / 2
# Tilt: the angle within +-MAX_TILT degrees whose turn makes the object's projection profiles sharpest; the object
# is turned only when they are at least TILT_GAIN sharper than upright, so an upright garment is left alone
# (how the gain was chosen: docs/inputs.md, "Tilt").
MAX_TILT = 15
TILT_GAIN = 0.003
# At most this many object pixels decide the tilt (an even subsample of the mask beyond it).
TILT_POINTS = 4_000
# The tilt is judged on the object mask at most this many pixels a side (the size the gains were chosen at).
TILT_SIZE = 112
# Beyond this gain the profiles are trusted alone (large tilts, where the symmetry check errs more).
TILT_SURE = 0.02
# The symmetry check looks this many degrees either side of the profiles' angle.
TILT_AGREE = 2
# A 28 x 28 upload whose background (median of its outermost pixels) is at most this level is the dataset's own
# format and passes through as it is; the dataset's own test images stay below it (docs/inputs.md).
BLACK_LEVEL = 32
# A 28 x 28 upload whose object spans fewer pixels than this (both ways) is framed again like a photo: the dataset
# resized every object's longest side to 28, so a clean test image almost never spans fewer (docs/inputs.md).
REFRAME_BELOW = 26
# An object whose brightest pixel is fainter than this above its background is taken as blank: its contrast is
# not stretched (stretching would turn faint noise on a plain picture into an object).
CONTRAST_FLOOR = 2 * TRIM_TOLERANCE
# "Sharpening pixels using a Gaussian operator of the radius and standard deviation of 1.0" (the dataset's README).
SHARPEN_SIGMA = 1.0


class ImageError(ValueError):
    """An input image was refused; ``status`` is the HTTP code that fits."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _count_tiff_chunks(data: bytes) -> int:
    """The most strips or tiles declared in the first directory of a TIFF (0 if ``data`` is not one).

    Read here, without Pillow, because Pillow spends the memory while opening the file (see
    :data:`MAX_TIFF_CHUNKS`). Only counts are read; anything malformed is left for Pillow to refuse.
    """
    if data[:2] not in (b"II", b"MM") or data[2:4] not in (b"*\0", b"\0*", b"+\0", b"\0+"):
        return 0
    endian = "<" if data[:2] == b"II" else ">"
    big = data[2] == 0x2B  # BigTIFF, decided as Pillow decides it
    try:
        (offset,) = struct.unpack_from(endian + ("Q" if big else "L"), data, 8 if big else 4)
        (count,) = struct.unpack_from(endian + ("Q" if big else "H"), data, offset)
    except struct.error:
        return 0
    entry = struct.Struct(endian + ("HHQ8x" if big else "HHL4x"))
    first = offset + (8 if big else 2)
    entries = data[first:first + min(count, len(data)) * entry.size]
    entries = entries[:len(entries) - len(entries) % entry.size]
    counts = [n for tag, _, n in entry.iter_unpack(entries) if tag in (_TIFF_STRIP_OFFSETS, _TIFF_TILE_OFFSETS)]
    return max(counts, default=0)


def _claimed_format(data: bytes) -> str | None:
    """The allowed format whose signature ``data`` starts with, by Pillow's own checks; ``None`` if none.

    Tells a GIF cut off in its colour table (422, corrupt) from a file of another kind (415): without this,
    Pillow reports both as "cannot identify image file".
    """
    from PIL import Image

    Image.init()
    for name in ALLOWED_FORMATS:
        _, accept = Image.OPEN.get(name, (None, None))
        if accept is not None and accept(data[:16]) is True:  # a string instead means "not in this build"
            return name
    return None


def _open(data: bytes):
    """Parse the header only (no pixels yet) with the allowed plugins; refuse too many pixels, scans or tiles."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("empty image file", 400)
    if (chunks := _count_tiff_chunks(data)) > MAX_TIFF_CHUNKS:
        raise ImageError(f"TIFF declares {chunks:,} strips or tiles; at most {MAX_TIFF_CHUNKS:,} are accepted", 413)
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        if claimed := _claimed_format(data):
            raise ImageError(f"the image could not be decoded (a {claimed} signature, then no readable {claimed} "
                             "header); it is truncated or corrupt", 422) from None
        raise ImageError(f"not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})", 415) from None
    width, height = image.size
    if width * height > MAX_PIXELS or width <= 0 or height <= 0:
        raise ImageError(f"image is {width} x {height} pixels; at most {MAX_PIXELS:,} pixels are accepted", 413)
    # Every start of scan is the marker FF DA, which entropy-coded data never contains (an FF there is followed by
    # 00 or a restart marker), so counting it bounds the scans from above; Pillow (JPEG, or MPO for a JPEG with
    # several pictures) stops parsing at the first scan and cannot tell.
    if image.format in ("JPEG", "MPO") and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise ImageError(f"JPEG has {scans:,} scans; at most {MAX_JPEG_SCANS} are accepted", 413)
    return image


# Pillow's 16-bit grayscale modes; their full scale (65535) maps to 255.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# EXIF tag 0x0112: 1 is "as stored"; 2-8 are the mirrorings and quarter turns a camera records instead of
# turning the pixels (https://www.exif.org/Exif2-2.PDF, section 4.6.4).
EXIF_ORIENTATION = 0x0112
# An alpha above this is object, at or below it background, when the trim reads the transparency mask.
OPAQUE = 127


def orient(image):
    """``image`` turned and mirrored as its EXIF orientation says (every format whose EXIF Pillow reads).

    A camera stores a portrait photo sideways and records the turn in the tag; viewers apply it, so must we.
    An unreadable EXIF block leaves the pixels as stored rather than refusing the photo.
    """
    from PIL import ImageOps

    try:
        if image.getexif().get(EXIF_ORIENTATION, 1) in range(2, 9):
            return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF is no reason to refuse the pixels
        pass
    return image


def _full_scale(pixels: np.ndarray, mode: str) -> float:
    """The sample value that means white: 65535 for 16-bit modes; from the values' range for 32-bit ones."""
    if mode in WIDE_MODES:
        return 65535.0
    peak = float(pixels.max(initial=0))
    if mode == "F" and peak <= 1.0:
        return 1.0
    return 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak


def to_8bit(image):
    """High-bit-depth grayscale (16-bit, 32-bit integer or float) scaled to 8 bits; other modes unchanged.

    Pillow's own ``convert("L")`` clips these modes at 255 instead of scaling, which turns a 16-bit photo white.
    """
    from PIL import Image

    if image.mode not in (*WIDE_MODES, "I", "F"):
        return image
    pixels = np.asarray(image).astype(np.float64)
    scaled = np.clip(np.round(pixels * (255.0 / _full_scale(pixels, image.mode))), 0, 255)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def split_alpha(image) -> tuple:
    """``(image without alpha, uint8[H, W] alpha or None)``: alpha channels, palette and colour-key transparency.

    ``None`` when every pixel is opaque, so an RGBA file without transparent pixels is framed as an RGB one.
    """
    if image.mode not in ("RGBA", "RGBa", "LA", "La", "PA") and "transparency" not in image.info:
        return image, None
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if int(alpha.min()) == 255:
        return rgba.convert("RGB"), None
    return rgba.convert("RGB"), alpha


def composite(rgb: np.ndarray, alpha: np.ndarray, backdrop: int) -> np.ndarray:
    """``rgb`` over a uniform ``backdrop`` level through ``alpha``: whatever colour transparent pixels hold vanishes.

    Pillow's 8-bit compositing, not numpy floats: a large upload must not cost several float copies of itself.
    """
    from PIL import Image

    rgba = Image.fromarray(rgb)
    rgba.putalpha(Image.fromarray(alpha))
    backdrop_image = Image.new("RGBA", rgba.size, (backdrop, backdrop, backdrop, 255))
    return np.asarray(Image.alpha_composite(backdrop_image, rgba).convert("RGB"))


def transparent_backdrop(invert: bool | None) -> int:
    """The level a transparent background stands for: white (a product photo, negated later) unless told not to.

    Fashion-MNIST's photos were shot on white; a cut-out product photo is the same photo without its backdrop.
    """
    return 0 if invert is False else 255


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8)


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


def _to_rgb(image) -> np.ndarray:
    """``uint8[H, W, 3]`` of an image without alpha (CMYK, palette, 1-bit and 8-bit gray included)."""
    if image.mode not in ("RGB", "L"):
        try:
            image = image.convert("L") if image.mode == "1" else image.convert("RGB")
        except ValueError:  # a mode Pillow cannot turn into RGB (e.g. LAB): its gray
            image = image.convert("L")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_pixels(image) -> tuple[np.ndarray, np.ndarray | None]:
    """``(uint8[H, W, 3], uint8[H, W] alpha or None)`` of a loaded image, shown as its file says.

    Turned by its EXIF orientation, scaled from a high bit depth, its transparency split off as a mask.
    """
    image, alpha = split_alpha(to_8bit(orient(image)))
    return _to_rgb(image), alpha


def corner_colour(rgb: np.ndarray) -> np.ndarray:
    """The background colour: per channel, the median of the four corners' 3 x 3 patches (robust to noise)."""
    k = max(1, min(3, rgb.shape[0] // 4, rgb.shape[1] // 4))
    patches = [rgb[:k, :k], rgb[:k, -k:], rgb[-k:, :k], rgb[-k:, -k:]]
    return np.median(np.concatenate([p.reshape(-1, 3) for p in patches]), axis=0)


def _content_span(mask: np.ndarray, axis: int) -> tuple[float, float] | None:
    """First and one-past-last index (as fractions of the length) along ``axis`` that hold enough object pixels."""
    counts = mask.sum(axis=axis)
    needed = max(2, TRIM_MIN_RUN * mask.shape[axis])
    hits = np.flatnonzero(counts >= needed)
    if not len(hits):
        return None
    return hits[0] / len(counts), (hits[-1] + 1) / len(counts)


def _probe(pixels: np.ndarray):
    """A Pillow copy of ``pixels`` at most :data:`TRIM_PROBE_SIZE` a side (box-averaged), for deciding the trim."""
    from PIL import Image

    height, width = pixels.shape[:2]
    probe = Image.fromarray(pixels)
    if max(height, width) > TRIM_PROBE_SIZE:
        scale = TRIM_PROBE_SIZE / max(height, width)
        probe = probe.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    return probe


def box_of(mask: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` in a ``height x width`` image of the object marked in ``mask`` (any size).

    The whole image when the mask holds no object (a blank upload stays blank).
    """
    rows, cols = _content_span(mask, 1), _content_span(mask, 0)
    if rows is None or cols is None:
        return 0, height, 0, width
    top, bottom = int(np.floor(rows[0] * height)), int(np.ceil(rows[1] * height))
    left, right = int(np.floor(cols[0] * width)), int(np.ceil(cols[1] * width))
    return top, max(bottom, top + 1), left, max(right, left + 1)


def object_mask(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Object pixels of a probe copy (:func:`_probe`): not within 5% of the background colour, after a 3 x 3 median.

    The median keeps noise and JPEG ringing from counting as object.
    """
    from PIL import ImageFilter

    probe = _probe(rgb)
    if min(probe.size) >= 3:
        probe = probe.filter(ImageFilter.MedianFilter(3))
    return np.abs(np.asarray(probe, dtype=np.int16) - background.astype(np.int16)).max(axis=2) > TRIM_TOLERANCE


def trim_box(rgb: np.ndarray, background: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the object: rows and columns not within 5% of the background colour.

    Decided on a median-filtered copy of at most :data:`TRIM_PROBE_SIZE` pixels a side, so noise and JPEG
    ringing do not count as object. The whole image when nothing differs (a blank upload stays blank).
    """
    return box_of(object_mask(rgb, background), *rgb.shape[:2])


def _border_samples(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(design[N, 3], values[N, C])`` of the outer ring: rows ``1, row, col`` (fractions of the side) and pixels."""
    height, width = pixels.shape[:2]
    k = max(1, round(LIGHT_BORDER * min(height, width)))
    ring = np.zeros((height, width), dtype=bool)
    ring[:k], ring[-k:], ring[:, :k], ring[:, -k:] = True, True, True, True
    rows, cols = np.nonzero(ring)
    design = np.column_stack([np.ones(len(rows)), (rows + 0.5) / height, (cols + 0.5) / width])
    return design, pixels[rows, cols].astype(np.float64)


def _side_medians_plane(design: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A first plane through the medians of the four sides: robust to an object covering part of any side."""
    rows, cols = design[:, 1], design[:, 2]
    side = [np.median(values[m], axis=0) for m in (rows < 0.5 - 0.45, rows > 0.95, cols < 0.05, cols > 0.95)]
    top, bottom, left, right = (s if np.all(np.isfinite(s)) else np.median(values, axis=0) for s in side)
    slope_r, slope_c = bottom - top, right - left
    return np.stack([(top + bottom + left + right) / 4 - slope_r / 2 - slope_c / 2, slope_r, slope_c])


def fit_light(pixels: np.ndarray) -> np.ndarray | None:
    """``[3, C]`` coefficients of the plane ``a + b * row + c * col`` (fractions of the side) the backdrop follows.

    Fitted to the border: a first plane through the sides' medians, then least squares on the border pixels within
    tolerance of it, twice. ``None`` when the light is even (the plane spans at most :data:`UNEVEN_LEVELS`) or
    when the border does not follow a plane (most of it is object).
    """
    import warnings as _warnings

    design, values = _border_samples(pixels)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", RuntimeWarning)  # a side too thin to hold pixels: its median is NaN
        coef = _side_medians_plane(design, values)
    for tolerance in (2 * TRIM_TOLERANCE, TRIM_TOLERANCE):
        keep = np.abs(design @ coef - values).max(axis=1) <= tolerance
        if keep.mean() < 0.5:
            return None
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
    span = np.abs(coef[1]) + np.abs(coef[2])
    return coef if float(span.max()) > UNEVEN_LEVELS else None


def level_light(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` with uneven light on its backdrop levelled, as a copy of at most :data:`TRIM_PROBE_SIZE` a side.

    The backdrop's plane (:func:`fit_light`) is divided out (a light backdrop: light multiplies) or subtracted
    (a dark one), keeping its brightest corner's colour. ``rgb`` itself when the light is even.
    """
    work = np.asarray(_probe(rgb))
    coef = fit_light(work)
    if coef is None:
        return rgb
    height, width = work.shape[:2]
    rows = ((np.arange(height) + 0.5) / height)[:, None, None]
    cols = ((np.arange(width) + 0.5) / width)[None, :, None]
    field = coef[0] + coef[1] * rows + coef[2] * cols
    corners = np.stack([coef[0] + coef[1] * r + coef[2] * c for r in (0, 1) for c in (0, 1)])
    if float(corners.max(axis=0).mean()) > 127:
        flat = work * (corners.max(axis=0) / np.maximum(field, 1.0))
    else:
        flat = work - (field - corners.min(axis=0))
    return np.clip(np.round(flat), 0, 255).astype(np.uint8)


def _profile_sharpness(rows: np.ndarray, cols: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """For each angle, the sum of squared counts of the object's pixels per 1-pixel row and column once turned.

    The classic projection-profile measure of document deskewing: straight edges (a hem, a trouser leg, the side
    of a bag) pile up in few rows or columns when they are level, and spread when tilted.
    """
    theta = np.deg2rad(degrees)[:, None]
    scores = np.zeros(len(degrees))
    for turned in (cols * np.cos(theta) - rows * np.sin(theta), cols * np.sin(theta) + rows * np.cos(theta)):
        bins = np.round(turned - turned.min(axis=1, keepdims=True)).astype(np.int64)
        width = int(bins.max()) + 1
        # One bincount for every angle at once: angle k's bins are offset by k * width.
        counts = np.bincount((bins + np.arange(len(degrees))[:, None] * width).ravel(),
                             minlength=len(degrees) * width).reshape(len(degrees), width).astype(np.float64)
        scores += (counts * counts).sum(axis=1)
    return scores


def _mirror_overlap(rows: np.ndarray, cols: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """For each angle, how much of the turned object its own left-right mirror image covers (0-1).

    Most garments are symmetric when upright; an angle that makes the object its own mirror image is upright.
    The mirror axis is the column through the median object pixel.
    """
    theta = np.deg2rad(degrees)[:, None]
    across = cols * np.cos(theta) - rows * np.sin(theta)
    down = cols * np.sin(theta) + rows * np.cos(theta)
    across = np.round(across - np.median(across, axis=1, keepdims=True)).astype(np.int64)
    down = np.round(down - down.min(axis=1, keepdims=True)).astype(np.int64)
    half, height = int(np.abs(across).max()), int(down.max()) + 1
    width = 2 * half + 1
    cells = (np.arange(len(degrees))[:, None] * height + down) * width + across + half
    grid = np.bincount(cells.ravel(), minlength=len(degrees) * height * width).reshape(len(degrees), height, width)
    return np.minimum(grid, grid[:, :, ::-1]).sum(axis=(1, 2)) / len(rows)


def tilt_of(mask: np.ndarray) -> float:
    """Degrees (Pillow's ``rotate`` sense, counter-clockwise) that turn the object in ``mask`` upright; 0 if upright.

    The whole degree within +-:data:`MAX_TILT` whose turn makes the projection profiles sharpest
    (:func:`_profile_sharpness`), when it is at least :data:`TILT_GAIN` sharper than the object as it stands.
    """
    if max(mask.shape) > TILT_SIZE:  # the same evidence whatever the resolution: the profiles are judged at one size
        from PIL import Image

        scale = TILT_SIZE / max(mask.shape)
        size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 127
    rows, cols = np.nonzero(mask)
    if len(rows) < 16:
        return 0.0
    step = max(1, len(rows) // TILT_POINTS)
    rows, cols = rows[::step].astype(np.float64), cols[::step].astype(np.float64)
    # Every third degree first, then the whole degrees around the best of those: half the work of all 31.
    coarse = np.arange(-MAX_TILT, MAX_TILT + 1, 3)
    scores = _profile_sharpness(rows, cols, coarse)
    centre = int(coarse[int(np.argmax(scores))])
    fine = np.array([d for d in range(centre - 2, centre + 3) if abs(d) <= MAX_TILT and d % 3])
    degrees = np.concatenate([coarse, fine])
    scores = np.concatenate([scores, _profile_sharpness(rows, cols, fine)]) if len(fine) else scores
    best = int(np.argmax(scores))
    upright = scores[int(np.flatnonzero(degrees == 0)[0])]
    if scores[best] <= (1 + TILT_GAIN) * upright:
        return 0.0
    if scores[best] > (1 + TILT_SURE) * upright:
        return -float(degrees[best])
    # A small gain needs a second, independent opinion (symmetry): a shoe's sole or a bag's strap can make the
    # profiles a little sharper at a tilt while the object stands upright.
    near = np.arange(degrees[best] - TILT_AGREE, degrees[best] + TILT_AGREE + 1)
    overlap = _mirror_overlap(rows, cols, np.concatenate([[0], near]))
    return -float(near[int(np.argmax(overlap[1:]))]) if overlap[1:].max() > overlap[0] else 0.0


def deskew(rgb: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rgb turned so the object stands upright, its object mask or None)`` (see :func:`tilt_of`).

    A turned copy is at most the probe's size, the corners the turn uncovers filled with ``background``, and its
    mask is ``None`` (to be found again). An upright object comes back as ``rgb`` itself with the mask already
    computed, so the trim does not compute it twice.
    """
    from PIL import Image

    mask = object_mask(rgb, background)
    degrees = tilt_of(mask)
    if not degrees:
        return rgb, mask
    fill = tuple(round(float(c)) for c in background)
    return np.asarray(_probe(rgb).rotate(degrees, Image.Resampling.BICUBIC, expand=True, fillcolor=fill)), None


def stretch_contrast(gray: np.ndarray) -> np.ndarray:
    """``gray`` (float, background at 0) scaled so its brightest pixel is white, as in every dataset image.

    Left as it is when already white, or when fainter than :data:`CONTRAST_FLOOR` (a blank picture).
    """
    peak = float(gray.max(initial=0))
    if peak < CONTRAST_FLOOR or peak >= 255:
        return gray
    return gray * (255.0 / peak)


def alpha_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the visible object: the rows and columns holding opaque pixels."""
    return box_of(np.asarray(_probe(alpha)) > OPAQUE, *alpha.shape)


def sharpen_kernel(sigma: float = SHARPEN_SIGMA) -> np.ndarray:
    """The 3 x 3 "Gaussian operator of radius 1 and standard deviation ``sigma``" that sharpens, sum 1.

    Fashion-MNIST's description of this step is ImageMagick's description of ``-sharpen 1x1``; its SharpenImage
    (MagickCore/effect.c) builds this kernel: a (2 * radius + 1)-wide Gaussian, negated, its centre replaced by
    twice the Gaussian's sum, normalised. It is milder than an unsharp mask at 100% (centre 1.66, not 1.84), which
    matters because uploads made from Fashion-MNIST images were sharpened once already (docs/inputs.md).
    """
    offsets = np.arange(-1, 2)
    gauss = np.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / (2 * sigma ** 2))
    kernel = -gauss
    kernel[1, 1] = 2 * gauss.sum()
    return kernel / kernel.sum()


def sharpen(image):
    """``image`` (a Pillow image) convolved with :func:`sharpen_kernel`, its edge pixels repeated outwards.

    Pillow's ``Kernel`` filter leaves the outermost pixels unfiltered, so the image is padded by one repeated
    pixel first (ImageMagick's default "edge" virtual pixels) and the pad cut off after.
    """
    from PIL import Image, ImageFilter

    pixels = np.asarray(image)
    padded = Image.fromarray(np.pad(pixels, ((1, 1), (1, 1)) + ((0, 0),) * (pixels.ndim - 2), mode="edge"))
    sharp = padded.filter(ImageFilter.Kernel((3, 3), sharpen_kernel().ravel().tolist(), scale=1))
    return sharp.crop((1, 1, image.width + 1, image.height + 1))


def frame_like_dataset(rgb: np.ndarray, invert: bool | None = None, alpha: np.ndarray | None = None) -> np.ndarray:
    """Fashion-MNIST's own conversion of a product photo into ``uint8[28, 28]`` (see the module docs).

    Args:
        rgb: ``uint8[H, W, 3]`` decoded pixels.
        invert: ``None`` negates when the object is darker than its background; ``True``/``False`` force it.
        alpha: ``uint8[H, W]`` transparency, if the file has any: the transparent area is the background,
            whatever colour its pixels hold, and the object is framed from the mask.
    """
    from PIL import Image

    if alpha is not None:
        backdrop = transparent_backdrop(invert)
        rgb, background = composite(rgb, alpha, backdrop), np.full(3, float(backdrop))
        top, bottom, left, right = alpha_box(alpha)
    else:
        rgb = level_light(rgb)
        background = corner_colour(rgb)
        rgb, mask = deskew(rgb, background)
        if mask is None:
            mask = object_mask(rgb, background)
        top, bottom, left, right = box_of(mask, *rgb.shape[:2])
    crop = Image.fromarray(np.ascontiguousarray(rgb[top:bottom, left:right]))
    scale = IMAGE_SIZE / max(crop.size)
    size = (min(IMAGE_SIZE, max(1, round(crop.width * scale))), min(IMAGE_SIZE, max(1, round(crop.height * scale))))
    sharp = sharpen(crop.resize(size, Image.Resampling.LANCZOS))
    fill = tuple(round(float(c)) for c in background)
    canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), fill)
    canvas.paste(sharp, ((IMAGE_SIZE - size[0]) // 2, (IMAGE_SIZE - size[1]) // 2))
    gray = np.asarray(canvas.convert("L"), dtype=np.float32)
    level = float(np.asarray(Image.new("RGB", (1, 1), fill).convert("L"))[0, 0])
    # Polarity from the object itself: darker than its background (a product photo) means negate. Unlike the
    # border-brightness rule this also holds on a mid-tone or saturated backdrop (red is "dark" in grayscale).
    light = float(np.asarray(sharp.convert("L")).mean()) < level if invert is None else invert
    if light:
        gray, level = 255.0 - gray, 255.0 - level
    # Background to black, full range kept: undoes a grey or coloured backdrop (Fashion-MNIST's is white).
    stretched = stretch_contrast((gray - level) * (255.0 / max(255.0 - level, 1.0)))
    return np.clip(np.round(stretched), 0, 255).astype(np.uint8)


def frame_small(gray: np.ndarray, invert: bool | None = None) -> np.ndarray:
    """A 28 x 28 upload: the dataset's own format passes as it is; on another background it is brought to it.

    Polarity from the object (darker than the background means negate), then a background above
    :data:`BLACK_LEVEL` is mapped to black and the object's contrast stretched (:func:`stretch_contrast`): a
    faded, brightened or inverted 28 x 28 image becomes the dataset's light object on black.
    """
    ring = np.sort(np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]]).astype(np.float32))
    level = float(ring[(len(ring) - 1) // 2] + ring[len(ring) // 2]) / 2  # the median (np.median costs more here)
    pixels = gray.astype(np.float32)
    if invert is None:  # an object darker than its background needs a background above the tolerance
        differs = np.abs(pixels - level) > TRIM_TOLERANCE if level > TRIM_TOLERANCE else None
        invert = differs is not None and bool(differs.any()) and float(pixels[differs].mean()) < level
    if invert:
        gray, pixels, level = 255 - gray, 255.0 - pixels, 255.0 - level
    if level > BLACK_LEVEL:
        stretched = stretch_contrast(np.maximum(pixels - level, 0) * (255.0 / max(255.0 - level, 1.0)))
        gray = np.clip(np.round(stretched), 0, 255).astype(np.uint8)
    top, bottom, left, right = box_of(gray > TRIM_TOLERANCE, IMAGE_SIZE, IMAGE_SIZE)
    if max(bottom - top, right - left) < REFRAME_BELOW:  # a shrunken or shifted object: frame it as a photo
        return frame_like_dataset(np.stack([gray] * 3, axis=-1), invert=False)
    return gray


# What a PNG's info may hold for :func:`already_framed` to take its pixels as stored: nothing that could change how
# they are shown (orientation, transparency, a colour profile, several frames).
PLAIN_PNG_INFO = frozenset({"dpi", "aspect"})


def already_framed(image, invert: bool | None = None) -> np.ndarray | None:
    """A loaded upload's pixels as stored when it is already a Fashion-MNIST image, else ``None``.

    The early exit for the dataset's own format: a 28 x 28 8-bit grayscale PNG, nothing in its info but
    :data:`PLAIN_PNG_INFO`, whose border is dark (the median of its outermost pixels within
    :data:`TRIM_TOLERANCE` of black, so it is neither negated nor stretched) and whose object spans at least
    :data:`REFRAME_BELOW` pixels. The full path (:func:`decode_pixels`, then :func:`frame_small` with ``invert``
    ``None`` or ``False``) leaves such an image as it is, so none of its work is needed; any other image takes it.
    """
    if (invert or image.format != "PNG" or image.mode != "L" or image.size != (IMAGE_SIZE, IMAGE_SIZE)
            or image.info.keys() - PLAIN_PNG_INFO):
        return None
    gray = np.asarray(image)
    ring = np.sort(np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]]))
    if int(ring[(len(ring) - 1) // 2]) + int(ring[len(ring) // 2]) > 2 * TRIM_TOLERANCE:  # frame_small's level
        return None
    top, bottom, left, right = box_of(gray > TRIM_TOLERANCE, IMAGE_SIZE, IMAGE_SIZE)
    return gray if max(bottom - top, right - left) >= REFRAME_BELOW else None


def has_light_background(gray: np.ndarray) -> bool:
    """True when the outermost ring of pixels is mostly light."""
    ring = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(ring.mean()) > 127


def decode_image(data: bytes, invert: bool | None = None, framing: str = DEFAULT_FRAMING) -> np.ndarray:
    """Decode one image file into the model's ``uint8[28, 28]`` pixels.

    Args:
        data: the file's bytes.
        invert: ``None`` decides from the border (see module docs); ``True``/``False`` force it.
        framing: ``"dataset"`` (Fashion-MNIST's conversion) or ``"legacy"`` (scale the whole canvas).

    Returns:
        ``uint8`` array of shape ``(28, 28)``, light object on dark background.

    Raises:
        ImageError: empty, unsupported, too large, truncated or corrupt input.
    """
    from PIL import Image

    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, not {framing!r}")
    # Image.open already decompression-bomb-checks the header: a warning there is as much an error as in load().
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = _open(data)
            # Only the first frame is decoded (Image.open leaves every format on frame 0); nothing here
            # asks for n_frames or seeks, which would walk every frame of a GIF/TIFF/APNG with thousands.
            image.load()
            if framing == "dataset" and (pixels := already_framed(image, invert)) is not None:
                return pixels
            rgb, alpha = decode_pixels(image)
        except ImageError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageError(f"refused as a decompression bomb: {exc}", 413) from None
        except MemoryError:
            raise ImageError("the image needs more memory to decode than is allowed", 413) from None
        # Pillow's parsers are Python code running on hostile bytes: beside the errors it documents (OSError,
        # SyntaxError, ValueError) they trip over struct.error, IndexError, KeyError, AssertionError, ... (see
        # tests/fuzz_imaging.py). The list is open-ended, so whatever Pillow raises on a file is "corrupt".
        except Exception as exc:
            raise ImageError(f"the image could not be decoded ({exc}); it is truncated or corrupt", 422) from None
    if framing == "dataset" and rgb.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        return frame_like_dataset(rgb, invert, alpha)
    gray = _to_gray(rgb if alpha is None else composite(rgb, alpha, transparent_backdrop(invert)))
    if framing == "dataset":
        return frame_small(gray, invert)
    # Legacy framing: the whole canvas.
    if invert if invert is not None else has_light_background(gray):
        gray = 255 - gray
    return _fit(gray)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8[28, 28]`` image (for clients, tests and examples)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
