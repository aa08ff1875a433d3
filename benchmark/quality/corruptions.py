"""The corruption families of MNIST-C (Mu and Gilmer, 2019, arXiv:1906.02337), written from their definitions.

Each family maps a ``uint8[28, 28]`` test image (light object on black) to a corrupted ``uint8[28, 28]`` at a
severity from 1 to 5. Severity 3 is MNIST-C's own parameter for the family (the one its published code applies);
1 and 2 are milder, 4 and 5 harsher, taken where possible from the ImageNet-C ladder the MNIST-C code starts
from (Hendrycks and Dietterich, 2019). ``inverse`` has no parameter in MNIST-C: it has severity 3 only.

All randomness comes from the ``rng`` passed in, so a seed reproduces the whole benchmark.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SIZE = 28
CENTRE = SIZE / 2  # Pillow's affine transforms address pixel edges: the image's centre is 14.0, MNIST-C's 13.5
SEVERITIES = (1, 2, 3, 4, 5)

# MNIST-C's own parameter is the third entry of every ladder.
SHOT_PHOTONS = (12, 6, 3, 2, 1.5)  # Poisson photons per unit of intensity: fewer is noisier
IMPULSE_AMOUNT = (0.06, 0.09, 0.17, 0.22, 0.27)  # share of pixels set to black or white
GLASS = ((0.5, 1, 1), (0.6, 1, 2), (0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3))  # sigma, max shift, iterations
MOTION = ((10, 1.0), (10, 2.0), (10, 3.0), (15, 5.0), (15, 8.0))  # ImageMagick -motion-blur radius, sigma
SHEAR = (0.2, 0.3, 0.4, 0.6, 0.8)  # shear angle, radians, random sign
ROTATE = (0.2, 0.3, 0.4, 0.6, 0.8)  # radians, random sign
SCALE = (0.9, 0.8, 0.7, 0.6, 0.5)  # the object shrinks about the centre
BRIGHTNESS = (0.2, 0.35, 0.5, 0.6, 0.7)  # added to HSV value (= gray level for a gray image), clipped
CONTRAST = (0.4, 0.2, 0.1, 0.07, 0.05)  # distance from the mean kept


def _unit(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(pixels, dtype=np.float64) / 255.0


def _bytes(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.clip(unit, 0, 1) * 255.0), 0, 255).astype(np.uint8)


def gaussian(unit: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur, kernel truncated at 4 sigma, edges repeated (scikit-image's defaults)."""
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    out = unit
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        length = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + length), axis=axis) for k, w in enumerate(kernel))
    return out


def sample(unit: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``unit`` at fractional ``rows``/``cols``, coordinates clamped to the edge."""
    rows, cols = np.clip(rows, 0, SIZE - 1), np.clip(cols, 0, SIZE - 1)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, SIZE - 1), np.minimum(c0 + 1, SIZE - 1)
    fr, fc = rows - r0, cols - c0
    top = unit[r0, c0] * (1 - fc) + unit[r0, c1] * fc
    bottom = unit[r1, c0] * (1 - fc) + unit[r1, c1] * fc
    return top * (1 - fr) + bottom * fr


def affine(pixels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``pixels`` warped about the centre: output point ``p`` takes input ``matrix @ (p - c) + c`` (x, y order).

    Bilinear, black outside, as MNIST-C's ``transform.warp(x, inverse_map=...)`` does.
    """
    from PIL import Image

    (a, b), (d, e) = matrix
    data = (a, b, CENTRE - a * CENTRE - b * CENTRE, d, e, CENTRE - d * CENTRE - e * CENTRE)
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    return np.asarray(image.transform(image.size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR,
                                      fillcolor=0))


def _sign(rng: np.random.Generator) -> float:
    return float(rng.choice([-1.0, 1.0]))


def shot_noise(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    photons = SHOT_PHOTONS[severity - 1]
    return _bytes(rng.poisson(_unit(pixels) * photons) / photons)


def impulse_noise(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    out = np.asarray(pixels, dtype=np.uint8).copy()
    hit = rng.random(out.shape) < IMPULSE_AMOUNT[severity - 1]
    salt = rng.random(out.shape) < 0.5
    out[hit & salt], out[hit & ~salt] = 255, 0
    return out


def glass_blur(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, shuffle each pixel with a random neighbour (probability 1/2, ``iterations`` passes), blur again."""
    sigma, shift, iterations = GLASS[severity - 1]
    out = _bytes(gaussian(_unit(pixels), sigma))
    for _ in range(iterations):
        for h in range(SIZE - shift, shift, -1):
            for w in range(SIZE - shift, shift, -1):
                if rng.random() < 0.5:
                    dy, dx = rng.integers(-shift, shift, size=2)
                    hp, wp = h + dy, w + dx
                    out[h, w], out[hp, wp] = out[hp, wp], out[h, w]
    return _bytes(gaussian(_unit(out), sigma))


def motion_blur(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick's motion blur: a one-sided Gaussian of ``2 * radius + 1`` taps along a random angle (+-45)."""
    radius, sigma = MOTION[severity - 1]
    angle = np.deg2rad(rng.uniform(-45, 45))
    taps = np.arange(2 * radius + 1)
    weights = np.exp(-taps ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    unit = _unit(pixels)
    out = sum(w * sample(unit, rows + t * np.sin(angle), cols + t * np.cos(angle)) for t, w in zip(taps, weights,
                                                                                                   strict=True))
    return _bytes(out)


def shear(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    angle = SHEAR[severity - 1] * _sign(rng)
    return affine(pixels, np.array([[1.0, -np.sin(angle)], [0.0, np.cos(angle)]]))


def rotate(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    angle = ROTATE[severity - 1] * _sign(rng)
    return affine(pixels, np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]))


def scale(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = SCALE[severity - 1]
    return affine(pixels, np.eye(2) / factor)


def brightness(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV value raised by ``c``: for a gray image the value is the gray level, so this adds ``c``, clipped."""
    return _bytes(_unit(pixels) + BRIGHTNESS[severity - 1])


def contrast(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    unit = _unit(pixels)
    mean = unit.mean()
    return _bytes((unit - mean) * CONTRAST[severity - 1] + mean)


def inverse(pixels: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return 255 - np.asarray(pixels, dtype=np.uint8)


Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
FAMILIES: dict[str, Corruption] = {
    "shot_noise": shot_noise, "impulse_noise": impulse_noise, "glass_blur": glass_blur,
    "motion_blur": motion_blur, "shear": shear, "scale": scale, "rotate": rotate, "brightness": brightness,
    "contrast": contrast, "inverse": inverse,
}
# Families without a parameter in MNIST-C, measured at severity 3 alone.
SINGLE_LEVEL = ("inverse",)


def severities(family: str) -> tuple[int, ...]:
    """The severities a family is measured at."""
    return (3,) if family in SINGLE_LEVEL else SEVERITIES
