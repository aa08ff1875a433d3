"""The one reader of array files: ``.npy``, ``.npz`` and IDX, raw or gzipped, bounded and without pickles.

Used by the service's dataset tasks (service.datasets: an upload in memory) and the batch CLI
(clients.sources: files streamed chunk by chunk). Nothing here trusts a size it has not checked:
array headers are read before their data, gzip streams are inflated up to a limit and no further,
pickled and Fortran-ordered arrays are refused. Every refusal is a
:class:`~fashion.contract.ContractError` naming the file; its ``reason`` tells the caller which
answer it deserves (:data:`~fashion.contract.TOO_MANY`, :data:`~fashion.contract.NOT_ARRAYS`,
:data:`~fashion.contract.MALFORMED` for a corrupt file, or the shape and label rules).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fashion.contract import MALFORMED, NOT_ARRAYS, TOO_MANY, ContractError

# The array names looked for in an .npz, first match wins: the one definition for the service and the CLI.
IMAGE_KEYS = ("images", "x", "pixels")
LABEL_KEYS = ("labels", "y")
IDX_IMAGES_HEADER = 16  # magic + 3 dimensions
IDX_LABELS_HEADER = 8  # magic + 1 dimension
# What a damaged zip member raises: BadZipFile (bad CRC or header), zlib.error, EOFError (cut short),
# NotImplementedError (unknown compression), RuntimeError (encrypted member).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


def sniff(data: bytes) -> str | None:
    """The container format from the first bytes: ``gzip``, ``npy``, ``npz``, ``idx``, or ``None``."""
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:6] == b"\x93NUMPY":
        return "npy"
    if data[:4] == b"PK\x03\x04":
        return "npz"
    if data[:3] == b"\x00\x00\x08":  # IDX: two zero bytes, then 0x08 for unsigned bytes
        return "idx"
    return None


def not_arrays(data: bytes, name: str) -> ContractError:
    """The refusal of a file that is none of the formats read."""
    return ContractError(f"{name}: not a dataset file (expected .npy, .npz, or IDX, raw or gzipped; it starts with "
                         f"{data[:8].hex() or 'nothing'})", NOT_ARRAYS)


def gunzip(data: bytes, limit: int, name: str, too_many: str) -> bytes:
    """The decompressed content; refused (:data:`TOO_MANY`, ``too_many`` says why) past ``limit`` bytes, never
    inflating more."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut stream raises EOFError
        raise ContractError(f"{name}: cannot be decompressed ({exc}); the file is truncated or corrupt",
                            MALFORMED) from None
    if len(out) > limit:
        raise ContractError(f"{name}: {too_many}", TOO_MANY)
    return out


def open_maybe_gzipped(path: Path) -> BinaryIO:
    """``path`` opened for reading, through gzip when its first bytes say it is gzipped."""
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def idx_dims(data: bytes, name: str) -> tuple[int, ...]:
    """The dimensions an unsigned-byte IDX header declares (``data`` holds at least the header)."""
    if len(data) < 8 or sniff(data) != "idx" or not 1 <= data[3] <= 3 or len(data) < 4 + 4 * data[3]:
        raise ContractError(f"{name}: not an unsigned-byte IDX file (header {data[:4].hex()})", MALFORMED)
    return tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=data[3], offset=4))


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Any unsigned-byte IDX file's array (images ``(N, rows, cols)`` or labels ``(N,)``), no checksums."""
    dims = idx_dims(data, name)
    header = 4 + 4 * len(dims)
    if len(data) != header + int(np.prod(dims)):
        raise ContractError(f"{name}: {len(data) - header} payload bytes, the header promises {int(np.prod(dims))}",
                            MALFORMED)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_file(path: str | Path) -> np.ndarray:
    """Any ubyte IDX file, plain or gzipped (user data; the official files are checked by fashion.data)."""
    path = Path(path)
    try:
        with open_maybe_gzipped(path) as stream:
            data = stream.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ContractError(f"{path}: cannot be read ({exc}); the file is truncated or corrupt", MALFORMED) from None
    return parse_idx(data, str(path))


def read_npy_header(stream: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` stream, leaving it at the first data byte; pickles and Fortran order refused."""
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
    except ValueError as exc:
        raise ContractError(f"{name}: not a usable .npy array ({exc})", MALFORMED) from None
    if dtype.hasobject:
        raise ContractError(f"{name}: holds Python objects (a pickle); only plain numeric arrays are read", MALFORMED)
    if fortran and len(shape) > 1:
        raise ContractError(f"{name}: Fortran-ordered arrays are not read; save it in C order", MALFORMED)
    return shape, dtype


HeaderCheck = Callable[[tuple[int, ...], np.dtype], object]


def read_npy(stream: BinaryIO, name: str, check: HeaderCheck) -> np.ndarray:
    """A ``.npy`` array whose header ``check(shape, dtype)`` accepted first: its data is read only then."""
    shape, dtype = read_npy_header(stream, name)
    check(shape, dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = stream.read(size)
    if len(data) != size:
        raise ContractError(f"{name}: {len(data):,} data bytes, the .npy header promises {size:,}; truncated",
                            MALFORMED)
    if stream.read(1):  # also makes a zip member verify its CRC, which zipfile does at the end
        raise ContractError(f"{name}: data after the array; not a .npy file as numpy writes it", MALFORMED)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


@contextlib.contextmanager
def reading_zip(name: str) -> Iterator[None]:
    """Turns a damaged .npz into a :data:`~fashion.contract.MALFORMED` refusal naming the array."""
    try:
        yield
    except ZIP_ERRORS as exc:
        raise ContractError(f"{name}: cannot be read from the .npz ({exc})", MALFORMED) from None


def npz_keys(archive: zipfile.ZipFile, name: str) -> tuple[str, str, str | None, str | None]:
    """The images' key and member, and the labels' (or ``None``), of an open ``.npz``."""
    members = {member.removesuffix(".npy"): member for member in archive.namelist()}
    image_key = next((k for k in IMAGE_KEYS if k in members), None)
    if image_key is None:
        raise ContractError(f"{name}: no 'images' (or 'x') array in the .npz; it has {sorted(members)[:10]}",
                            MALFORMED)
    label_key = next((k for k in LABEL_KEYS if k in members), None)
    return image_key, members[image_key], label_key, members.get(label_key)


def open_npz(source: bytes | Path, name: str) -> zipfile.ZipFile:
    """An ``.npz`` (bytes or a path) opened as the zip archive it is."""
    with reading_zip(name):
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)


def read_npz(data: bytes, name: str, check_images: HeaderCheck,
             check_labels: Callable[[str, int], HeaderCheck]) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (``images``, ``x`` or ``pixels``) and optional labels (``labels`` or ``y``) from an ``.npz``.

    ``check_images`` vets the images' header; ``check_labels(where, count)`` gives the check of the labels'.
    """
    archive = open_npz(data, name)
    with reading_zip(name):
        image_key, image_member, label_key, label_member = npz_keys(archive, name)
        where = f"{name}[{image_key}]"
        with reading_zip(where), archive.open(image_member) as stream:
            pixels = read_npy(stream, where, check_images)
        if label_key is None:
            return pixels, None
        where = f"{name}[{label_key}]"
        with reading_zip(where), archive.open(label_member) as stream:
            return pixels, read_npy(stream, where, check_labels(where, len(pixels)))


def declared_image_count(data: bytes) -> int | None:
    """How many images a file's headers announce (gzip inflated by 16 bytes, no array data read); ``None`` when
    they cannot be read (whoever reads the file later reports why)."""
    try:
        kind = sniff(data)
        if kind == "gzip":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                data, kind = stream.read(IDX_IMAGES_HEADER), "idx"
        if kind == "idx" and len(data) >= IDX_IMAGES_HEADER and data[3] == 3:
            return idx_dims(data, "images")[0]
        if kind == "npy":
            shape, _ = read_npy_header(io.BytesIO(data), "images")
            return shape[0] if shape else None
        if kind == "npz":
            archive = zipfile.ZipFile(io.BytesIO(data))
            _, member, _, _ = npz_keys(archive, "images")
            with archive.open(member) as stream:
                shape, _ = read_npy_header(stream, "images")
            return shape[0] if shape else None
    except (ContractError, *ZIP_ERRORS):
        return None
    return None
