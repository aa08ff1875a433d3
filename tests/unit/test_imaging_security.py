"""Hostile uploads: ``decode_image`` refuses them with ``ImageError``, quickly and in bounded memory.

Four kinds of checks, all fast (under 30 s on two cores, 20 s of it fuzzing):

* a bounded run of the coverage-guided fuzzer (``tests/fuzz_imaging.py``);
* format spoofing and polyglots: only the bytes choose the parser, and only an allowed one;
* truncated files of every allowed format;
* decompression and work bombs, each decoded in a fresh interpreter so that its time and peak memory
  are its own.

Hostile files are crafted here byte by byte (they are tiny: the point of a bomb is that its header promises
far more than the file holds), real ones are re-encoded from the sample images.
"""

from __future__ import annotations

import base64
import functools
import io
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from fashion.imaging import MAX_JPEG_SCANS, MAX_TIFF_CHUNKS, ImageError, decode_image
from tests.fuzz_imaging import build_seeds

REPO = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = 20
# A hang guard, not a speed figure: refusals take milliseconds, a paid-for bomb takes minutes.
BOMB_SECONDS = 20.0
# A legitimate image at the pixel cap (2000 x 2000 16-bit RGBA PNG, the widest pixels an allowed format gives)
# peaks at about 73 MB above the baseline: the decoded RGBA, its alpha composite and the gray copy. A bomb gets
# that plus headroom for allocator noise, no more: one whose header's promise (gigapixels) were paid for would
# need gigabytes, and the refused ones stay within a few MB (numbers printed with -s).
BOMB_MEGABYTES = 128


# --- crafted files -------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC (so that Pillow reads on instead of refusing the chunk)."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, idat: bytes, *, depth: int = 8, color: int = 0, before: bytes = b"",
        after: bytes = b"") -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose one IDAT holds ``idat``."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    return (b"\x89PNG\r\n\x1a\n" + header + before + png_chunk(b"IDAT", idat) + after
            + png_chunk(b"IEND", b""))


def zeros_deflated(size: int) -> bytes:
    """``size`` zero bytes, zlib-compressed (about 1,000 : 1)."""
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(size >> 20)]
    return b"".join([*parts, compressor.compress(bytes(size & ((1 << 20) - 1))), compressor.flush()])


def gif(screen: tuple[int, int], frame: tuple[int, int], frames: int = 1) -> bytes:
    """A GIF with a two-colour table and ``frames`` frames of ``frame`` size, each holding one pixel of data."""
    pixel = b"\x02\x02\x44\x01\x00"  # LZW, minimum code size 2: clear, colour 0, end
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, *frame, 0) + pixel
    return (b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
            + descriptor * frames + b"\x3b")


def tiff_ifd(entries: list[tuple[int, int, int, bytes]], at: int, next_ifd: int = 0) -> tuple[bytes, bytes]:
    """A little-endian IFD placed at offset ``at``: (directory bytes, the out-of-line values after it)."""
    directory = struct.pack("<H", len(entries))
    values = b""
    data_at = at + 2 + 12 * len(entries) + 4
    for tag, kind, count, value in sorted(entries):
        if len(value) <= 4:
            directory += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            directory += struct.pack("<HHII", tag, kind, count, data_at + len(values))
            values += value + b"\0" * (len(value) % 2)
    return directory + struct.pack("<I", next_ifd), values


SHORT, LONG = 3, 4


def tiff_gray(width: int, height: int, strips: int = 1, strip_bytes: int | None = None, compression: int = 1,
              pixels: bytes = b"\0" * 16) -> bytes:
    """An 8-bit gray TIFF; its ``strips`` strip offsets all point at the same few ``pixels``."""
    rows = -(-height // strips)
    entries = [(256, LONG, 1, struct.pack("<I", width)), (257, LONG, 1, struct.pack("<I", height)),
               (258, SHORT, 1, struct.pack("<H", 8)), (259, SHORT, 1, struct.pack("<H", compression)),
               (262, SHORT, 1, struct.pack("<H", 1)), (273, LONG, strips, struct.pack("<I", 8) * strips),
               (277, SHORT, 1, struct.pack("<H", 1)), (278, LONG, 1, struct.pack("<I", rows)),
               (279, LONG, strips, struct.pack("<I", strip_bytes or len(pixels)) * strips)]
    directory, values = tiff_ifd(entries, 8 + len(pixels))
    return b"II*\0" + struct.pack("<I", 8 + len(pixels)) + pixels + directory + values


def tiff_pages(pages: int, loop: bool = False) -> bytes:
    """A TIFF of ``pages`` 1 x 1 pages (or one page whose next-page link points back at itself)."""
    out = bytearray(b"II*\0" + struct.pack("<I", 8))
    for page in range(pages):
        at = len(out)
        entries = [(256, LONG, 1, struct.pack("<I", 1)), (257, LONG, 1, struct.pack("<I", 1)),
                   (258, SHORT, 1, struct.pack("<H", 8)), (262, SHORT, 1, struct.pack("<H", 1)),
                   (273, LONG, 1, struct.pack("<I", 0)), (279, LONG, 1, struct.pack("<I", 1))]
        size = 2 + 12 * len(entries) + 4
        next_ifd = at if loop else (at + size if page < pages - 1 else 0)
        directory, _ = tiff_ifd(entries, at, next_ifd)
        out += directory
    return bytes(out)


def riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def webp_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)


def webp_pixel() -> bytes:
    """The VP8L chunk of a real 1 x 1 lossless WebP."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (1, 1)).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()[12:]


def webp_canvas(width: int, height: int) -> bytes:
    """An animated WebP with a ``width`` x ``height`` canvas and one 1 x 1 frame."""
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    frame = bytes(6) + bytes(6) + bytes(3) + b"\0" + webp_pixel()
    return riff(webp_chunk(b"VP8X", b"\x12\0\0\0" + size) + webp_chunk(b"ANIM", bytes(6))
                + webp_chunk(b"ANMF", frame))


def webp_lossless(width: int, height: int) -> bytes:
    bits = (width - 1) | (height - 1) << 14
    return riff(webp_chunk(b"VP8L", b"\x2f" + struct.pack("<I", bits) + bytes(16)))


def webp_lossy(width: int, height: int) -> bytes:
    return riff(webp_chunk(b"VP8 ", b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(16)))


def bmp(width: int, height: int, pixels: bytes, bits: int = 8, compression: int = 0) -> bytes:
    """A BMP with a 256-colour gray palette."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(pixels), 0, 0, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def entropy_bits(bits: str) -> bytes:
    """Huffman-coded bits as JPEG bytes: padded with ones, every FF byte stuffed with 00."""
    bits += "1" * (-len(bits) % 8)
    return b"".join(b"\xff\x00" if (byte := int(bits[i:i + 8], 2)) == 0xFF else bytes((byte,))
                    for i in range(0, len(bits), 8))


def jpeg_progressive(side: int, scans: int) -> bytes:
    """A gray progressive JPEG: one DC scan, then ``scans`` 14-byte AC scans that skip every block.

    Each AC scan is two end-of-band runs of up to 32,767 blocks, yet libjpeg walks every block of the frame for it.
    """
    blocks = (-(-side // 8)) ** 2
    tables = (b"\x00" + bytes([1] + [0] * 15) + b"\x00"  # DC: one 1-bit code, "difference 0"
              + b"\x10" + bytes([1] + [0] * 15) + b"\xe0")  # AC: one 1-bit code, "end-of-band run of 2^14 + n"
    runs, left = "", blocks
    while left:
        run = min(left, 32767)
        if run < 16384:
            raise ValueError("the AC table only codes runs of 16,384 blocks or more: pick another side")
        runs, left = runs + "0" + format(run - 16384, "014b"), left - run
    ac_scan = jpeg_segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + entropy_bits(runs)
    return (b"\xff\xd8" + jpeg_segment(0xDB, b"\x00" + b"\x01" * 64)
            + jpeg_segment(0xC2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00")
            + jpeg_segment(0xC4, tables)
            + jpeg_segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + entropy_bits("0" * blocks)
            + ac_scan * scans + b"\xff\xd9")


def jpeg_header(width: int, height: int) -> bytes:
    """A baseline JPEG header that declares ``width`` x ``height`` and then ends."""
    return (b"\xff\xd8" + jpeg_segment(0xDB, b"\x00" + b"\x01" * 64)
            + jpeg_segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00") + b"\xff\xd9")


def pillow_file(image_format: str, size: tuple[int, int] = (2000, 2000), mode: str = "L", **params) -> bytes:
    """A real, all-black file written by Pillow (compresses to almost nothing)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=image_format, **params)
    return buffer.getvalue()


@functools.cache
def seeds() -> dict[str, bytes]:
    """The fuzzer's seed corpus: every sample in every allowed format, plus awkward modes (built once)."""
    return build_seeds()


# --- the fuzzer, bounded -------------------------------------------------------------------------------------


REFUSED_FORMATS = {
    "PCX": "L", "PPM": "L", "TGA": "L", "ICO": "RGBA", "DDS": "RGBA", "IM": "L", "SGI": "L", "XBM": "1",
    "EPS": "L", "PDF": "L", "BLP": "P", "MSP": "1", "SPIDER": "F", "JPEG2000": "RGB", "PALM": "1", "DIB": "L",
    "QOI": "RGB", "ICNS": "RGBA", "AVIF": "RGB",
}
CRAFTED_REFUSED = {
    "svg": lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"/>',
    "xml-entity-bomb": lambda: b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><x>&a;&a;&a;</x>',
    "html": lambda: b"<!doctype html><img src=x onerror=alert(1)>",
    "pdf": lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
    "postscript": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n(x) print showpage\n",
    "eps-dos-binary": lambda: b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIIIH", 30, 40, 0, 0, 0, 0, 0xFFFF) + b"%!PS" * 10,
    "psd": lambda: b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 1, 28, 28, 8, 1) + bytes(16),
    "fits": lambda: b"SIMPLE  =                    T".ljust(80) + b"BITPIX  =                    8".ljust(80),
    "zip-holding-a-png": lambda: b"PK\x03\x04" + bytes(22) + struct.pack("<HH", 5, 0) + b"a.png" + seeds()["0.png"],
    "html-then-png": lambda: b"<html>" + seeds()["0.png"],
    "pdf-then-jpeg": lambda: b"%PDF-1.4\n" + seeds()["0.jpeg"],
    "svg-with-embedded-png": lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><image href="data:image/png;base64,'
                                     + base64.b64encode(seeds()["0.png"]) + b'"/></svg>',
}

# An allowed format's signature followed by something else: a corrupt file of that format, refused as such.
SIGNATURE_THEN_OTHER = {
    "png-signature-then-jpeg": lambda: b"\x89PNG\r\n\x1a\n" + seeds()["0.jpeg"],
    "png-signature-then-garbage": lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "gif-javascript-polyglot": lambda: b"GIF89a/*=1;alert(1);/*" + bytes(16) + b"*/",
    "bmp-signature-then-text": lambda: b"BM" + b"hello, world\n" * 4,
    "tiff-directory-past-the-end": lambda: b"II*\0" + struct.pack("<I", 1 << 20) + bytes(16),
    "webp-riff-then-png": lambda: b"RIFF\0\0\0\0WEBPVP8L" + seeds()["0.png"],
}


def refused_format(image_format: str) -> bytes:
    from PIL import Image

    if image_format not in Image.SAVE:
        pytest.skip(f"this Pillow cannot write {image_format}")
    size = {"ICO": (32, 32), "ICNS": (16, 16), "DDS": (32, 32)}.get(image_format, (28, 28))
    return pillow_file(image_format, size, REFUSED_FORMATS[image_format])


def assert_refused(data: bytes, statuses: set[int]) -> ImageError:
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.status in statuses, str(info.value)
    return info.value


@pytest.mark.parametrize("image_format", sorted(REFUSED_FORMATS))
def test_formats_not_allowed_are_refused(image_format, monkeypatch):
    data = refused_format(image_format)
    # If the EPS reader were reached it would start Ghostscript: make that loud instead of slow.
    for name in ("Popen", "check_call", "run"):
        monkeypatch.setattr(subprocess, name, lambda *a, **k: pytest.fail("a subprocess was started"))
    assert_refused(data, {415})


@pytest.mark.parametrize("name", sorted(CRAFTED_REFUSED))
def test_spoofed_and_foreign_files_are_refused(name):
    assert_refused(CRAFTED_REFUSED[name](), {415})


@pytest.mark.parametrize("name", sorted(SIGNATURE_THEN_OTHER))
def test_signature_then_something_else_is_corrupt(name):
    error = assert_refused(SIGNATURE_THEN_OTHER[name](), {413, 422})
    assert "truncated or corrupt" in str(error) or error.status == 413


@pytest.mark.parametrize("payload", [b"PK\x03\x04" + bytes(40), b"<script>alert(1)</script>", b"%PDF-1.4\n"],
                         ids=["zip", "html", "pdf"])
@pytest.mark.parametrize("carrier", ["0.png", "0.jpeg", "0.gif"])
def test_trailing_payload_is_ignored(carrier, payload):
    """An image with another file appended decodes exactly as the image alone: the tail is never parsed."""
    clean = seeds()[carrier]
    assert np.array_equal(decode_image(clean + payload), decode_image(clean))


def test_content_type_plays_no_part():
    """``decode_image`` sees only bytes: a JPEG is decoded as a JPEG whatever it was labelled."""
    as_png, as_jpeg = decode_image(seeds()["0.png"]), decode_image(seeds()["0.jpeg"])
    assert np.abs(as_png.astype(int) - as_jpeg).mean() < 10


# --- truncated files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(k for k in seeds() if not k.startswith(("animated", "multi"))))
def test_truncated_files_are_corrupt(name):
    """Cut in half, every seed is corrupt (multi-frame seeds are left out: their first frame may be whole)."""
    data = seeds()[name]
    decode_image(data)  # whole, it decodes
    assert_refused(data[: len(data) // 2], {422})


# --- bombs -------------------------------------------------------------------------------------------------

# name: (builder, outcomes allowed: an HTTP status, 200 = decoded). Bombs whose promise exceeds a limit are
# refused (413; 422 where the decoder runs out of data first); the ones that stay within every limit decode,
# and what is asserted for them is the time and the memory.
BOMBS = {
    "png 50000x50000 header": (lambda: png(50_000, 50_000, zlib.compress(bytes(100))), {413}),
    "png 10000x10000 header": (lambda: png(10_000, 10_000, zlib.compress(bytes(100))), {413}),
    "png 3000x3000 zeros": (lambda: png(3000, 3000, zeros_deflated(3001 * 3000)), {413}),
    "png at the cap, 16-bit RGBA zeros (1000:1)": (lambda: png(2000, 2000, zeros_deflated(2000 * 16001), depth=16,
                                                              color=6), {200}),
    "png IDAT inflating to 64 MB for 16x16": (lambda: png(16, 16, zeros_deflated(64 << 20)), {200, 422}),
    "png zTXt over 1 MB": (lambda: png(16, 16, zlib.compress(bytes(17 * 16)), before=png_chunk(
        b"zTXt", b"k\0\0" + zeros_deflated(2 << 20))), {422}),
    "png 80 zTXt of 1 MB each": (lambda: png(16, 16, zlib.compress(bytes(17 * 16)), before=b"".join(
        png_chunk(b"zTXt", b"k%d\0\0" % i + zeros_deflated(1_000_000)) for i in range(80))), {422}),
    "apng declaring 2^31 frames": (lambda: png(16, 16, zlib.compress(bytes(17 * 16)), before=png_chunk(
        b"acTL", struct.pack(">II", 1 << 31, 0))), {200, 422}),
    "gif 50000x50000 screen": (lambda: gif((50_000, 50_000), (1, 1)), {413}),
    "gif 1x1 screen, 60000x60000 frame": (lambda: gif((1, 1), (60_000, 60_000)), {413}),
    "gif at the cap, LZW zeros": (lambda: pillow_file("GIF"), {200}),
    "gif with 20000 frames": (lambda: gif((28, 28), (1, 1), frames=20_000), {200}),
    "tiff 50000x50000": (lambda: tiff_gray(50_000, 50_000), {413}),
    "tiff strip declaring 4 GB": (lambda: tiff_gray(2000, 2000, strip_bytes=0xFFFF_FFF0), {422}),
    "tiff deflate strip declaring 4 GB": (lambda: tiff_gray(2000, 2000, strip_bytes=0xFFFF_FFF0, compression=8,
                                                            pixels=zlib.compress(bytes(4000))), {422}),
    "tiff 1x1000000 in 1000000 strips": (lambda: tiff_gray(1, 1_000_000, strips=1_000_000), {413}),
    f"tiff {MAX_TIFF_CHUNKS} strips, at the limit": (lambda: tiff_gray(1, MAX_TIFF_CHUNKS, strips=MAX_TIFF_CHUNKS),
                                                     {200, 422}),
    "tiff at the cap, deflate zeros": (lambda: pillow_file("TIFF", compression="tiff_adobe_deflate"), {200}),
    "tiff with 20000 pages": (lambda: tiff_pages(20_000), {200}),
    "tiff page linking to itself": (lambda: tiff_pages(1, loop=True), {200}),
    "webp 16383x16383 canvas": (lambda: webp_canvas(16_383, 16_383), {413}),
    "webp 12000x12000 canvas": (lambda: webp_canvas(12_000, 12_000), {413}),
    "webp 3000x3000 canvas": (lambda: webp_canvas(3000, 3000), {413}),
    "webp lossless 16384x16384 header": (lambda: webp_lossless(16_384, 16_384), {413, 422}),
    "webp lossy 16383x16383 header": (lambda: webp_lossy(16_383, 16_383), {413, 422}),
    "webp at the cap, lossless zeros": (lambda: pillow_file("WEBP", lossless=True), {200}),
    "bmp 50000x50000": (lambda: bmp(50_000, 50_000, bytes(16)), {413}),
    "bmp 2000x2000 RLE8, ends at once": (lambda: bmp(2000, 2000, b"\x00\x01", compression=1), {200, 422}),
    "bmp -2^31 rows": (lambda: bmp(1, -(2**31), bytes(16)), {413, 422}),
    "jpeg 65500x65500 header": (lambda: jpeg_header(65_500, 65_500), {413}),
    "jpeg 2000x2000, 5000 scans": (lambda: jpeg_progressive(2000, 5000), {413}),
    f"jpeg 2000x2000, {MAX_JPEG_SCANS} scans, at the limit": (lambda: jpeg_progressive(2000, MAX_JPEG_SCANS - 1),
                                                              {200}),
}

# Peak memory comes from the kernel's high-water mark of this process's own memory (VmHWM), restarted at the
# current size just before decoding. ru_maxrss would not do: a process spawned by pytest inherits pytest's peak
# in it (Linux carries it over the exec), which hides anything smaller.
