"""Coverage-guided fuzzing of :func:`fashion.imaging.decode_image` with atheris (libFuzzer).

``decode_image`` sees bytes uploaded by strangers, so its contract is narrow:
either ``uint8[28, 28]`` pixels come back or :class:`fashion.imaging.ImageError`
is raised. Anything else escaping (``struct.error``, ``KeyError``, Pillow's
``DecompressionBombError``, ...) is a crash here and a 500 in the service.

Usage (libFuzzer options and corpus folders pass straight through)::

    python -m tests.fuzz_imaging -max_total_time=60
    python -m tests.fuzz_imaging -runs=20000 -artifact_prefix=crashes/ corpus/
    python -m tests.fuzz_imaging crash-1234abcd        # replay one input

The seed corpus is built in code from the ten sample PNGs, re-encoded into
every allowed format and a few awkward modes, and written to a temporary
folder that is passed to libFuzzer after any folders given on the command
line (libFuzzer adds new inputs to the first folder, so a given folder keeps
what the run found). Pillow and ``fashion`` are instrumented, so coverage of
Pillow's Python plugins (the header parsers) guides the mutations; Pillow's
C decoders are not instrumented but still run on every input.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

VALID_STATUSES = {400, 413, 415, 422}


def _save(image, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def encode_samples() -> dict[str, bytes]:
    """Each sample PNG re-encoded into every allowed format, keyed ``<stem>.<format>``."""
    from PIL import Image

    from fashion.samples import sample_paths

    seeds = {}
    for path in sample_paths():
        with Image.open(path) as image:
            image.load()
        stem = path.stem.split("-", 1)[0]
        for image_format in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
            seeds[f"{stem}.{image_format.lower()}"] = _save(image, image_format)
    return seeds


def encode_variants() -> dict[str, bytes]:
    """One sample in the modes and container features that take other paths through the decoders.

    Transparency, palettes, 16-bit and CMYK pixels, several frames, compression
    schemes and a larger, non-square picture (so that resizing runs too).
    """
    import numpy as np
    from PIL import Image

    from fashion.samples import sample_paths

    with Image.open(sample_paths()[0]) as gray:
        gray.load()
    with Image.open(sample_paths()[9]) as other:
        other.load()
    rgba = Image.merge("RGBA", (gray, other, gray, other))
    palette = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    deep = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)
    cmyk = rgba.convert("CMYK")
    wide = gray.resize((90, 40))
    frames = [gray, other, gray.rotate(90)]
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated; decode_image must not care
    return {
        "rgba.png": _save(rgba, "PNG"),
        "palette-transparent.png": _save(palette, "PNG", transparency=0),
        "gray16.png": _save(deep, "PNG"),
        "rgb.png": _save(rgba.convert("RGB"), "PNG"),
        "animated.png": _save(gray, "PNG", save_all=True, append_images=frames[1:], duration=50),
        "la.png": _save(rgba.convert("LA"), "PNG"),
        "bilevel.png": _save(gray.convert("1"), "PNG"),
        "wide.png": _save(wide, "PNG"),
        "rgb.jpeg": _save(rgba.convert("RGB"), "JPEG", quality=90),
        "cmyk.jpeg": _save(cmyk, "JPEG"),
        "progressive.jpeg": _save(wide, "JPEG", progressive=True),
        "exif.jpeg": _save(gray, "JPEG", exif=exif),
        "multi.mpo": _save(gray.convert("RGB"), "MPO", save_all=True, append_images=[other.convert("RGB")]),
        "transparent.gif": _save(palette, "GIF", transparency=0),
        "animated.gif": _save(gray, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "palette.bmp": _save(palette, "BMP"),
        "bilevel.bmp": _save(gray.convert("1"), "BMP"),
        "rgba.bmp": _save(rgba, "BMP"),
        "rgba.webp": _save(rgba, "WEBP"),
        "lossless.webp": _save(rgba, "WEBP", lossless=True),
        "animated.webp": _save(gray.convert("RGB"), "WEBP", save_all=True, append_images=frames[1:]),
        "gray16.tiff": _save(deep, "TIFF"),
        "cmyk.tiff": _save(cmyk, "TIFF"),
        "rgba-lzw.tiff": _save(rgba, "TIFF", compression="tiff_lzw"),
        "deflate.tiff": _save(wide, "TIFF", compression="tiff_adobe_deflate"),
        "packbits.tiff": _save(palette, "TIFF", compression="packbits"),
        "jpeg.tiff": _save(rgba.convert("RGB"), "TIFF", compression="jpeg"),
        "group4.tiff": _save(gray.convert("1"), "TIFF", compression="group4"),
        "float.tiff": _save(gray.convert("F"), "TIFF"),
        "multipage.tiff": _save(gray, "TIFF", save_all=True, append_images=frames[1:]),
    }


def build_seeds() -> dict[str, bytes]:
    """The whole seed corpus: every sample in every allowed format plus the variants."""
    return encode_samples() | encode_variants()


def write_seeds(folder: Path) -> int:
    """Write the seed corpus into ``folder``; returns how many files."""
    seeds = build_seeds()
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
    return len(seeds)


def check_one(data: bytes) -> None:
    """One fuzz input: only ``ImageError`` with a known status may escape; pixels are ``uint8[28, 28]``."""
    import numpy as np

    from fashion.imaging import ImageError, decode_image

    try:
        pixels = decode_image(data)
    except ImageError as exc:
        if exc.status not in VALID_STATUSES:
            raise AssertionError(f"ImageError with status {exc.status}: {exc}") from exc
        return
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape == (28, 28)):
        raise AssertionError(f"decode_image returned {type(pixels).__name__} {getattr(pixels, 'shape', '')}")


def instrument_decoders() -> None:
    """Import Pillow (all plugins) and ``fashion.imaging`` with atheris coverage instrumentation.

    Must run before anything else imports PIL: atheris only instruments modules
    imported inside the block, and Pillow imports its plugins lazily.
    """
    import atheris

    if "PIL" in sys.modules:
        raise RuntimeError("PIL was imported before instrumentation; run as `python -m tests.fuzz_imaging`")
    with atheris.instrument_imports(include=["PIL", "fashion"]):
        from PIL import Image

        Image.init()
        import fashion.imaging  # noqa: F401


def main(argv: list[str]) -> None:
    """Instrument, write the seeds next to any given corpus folders and hand over to libFuzzer."""
    import atheris

    instrument_decoders()
    with tempfile.TemporaryDirectory(prefix="fuzz-imaging-seeds-") as seeds:
        count = write_seeds(Path(seeds))
        replay = any(not arg.startswith("-") and Path(arg).is_file() for arg in argv[1:])
        args = argv if replay else [*argv, seeds]
        print(f"fuzz_imaging: {count} seed inputs in {seeds}", file=sys.stderr, flush=True)
        atheris.Setup(args, check_one)
        atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
