"""Reading an uploaded dataset for a task: ``.npy``, ``.npz`` or IDX (raw or gzipped), bounded.

What a client sends to ``/classify_dataset/submit``: one dataset file as the raw body, or a
multipart form with the file in ``images``, an optional IDX/``.npy`` labels file in ``labels``
and an optional ``backend`` field. The file's first bytes choose the parser (as for images, the
Content-Type and file name never do). Nothing here trusts a size it has not checked: array
headers are read before their data, gzip streams are decompressed up to what the image limit
allows and no further, and pickled arrays are refused. Every refusal is a
:class:`~service.inputs.RequestError` with the status it deserves (413 too many images, 415 not
a dataset file, 422 corrupt or the wrong shape, 400 a malformed form).

These functions are synchronous and run in a worker thread: parsing 80 MB must not stall the
event loop that answers online requests.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from fashion.contract import IMAGE_SIZE, NUM_CLASSES
from fashion.data import DataError, parse_idx
from service.inputs import RequestError, form_value

IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE
IDX_IMAGES_HEADER = 16  # magic + 3 dimensions
IDX_LABELS_HEADER = 8  # magic + 1 dimension
# Array names looked for in an .npz, as the batch CLI does (clients.sources.npz_source).
IMAGE_KEYS = ("images", "x", "pixels")
LABEL_KEYS = ("labels", "y")
FORM_FIELDS = frozenset({"images", "labels", "backend"})


@dataclass(frozen=True)
class Upload:
    """A task's request as received: the body, its Content-Type header and the ``?backend=`` query value."""

    body: bytes
    content_type: str
    backend: str | None = None

    @property
    def media_type(self) -> str:
        """The Content-Type without its parameters, lower case."""
        return self.content_type.split(";")[0].strip().lower()


@dataclass(frozen=True)
class UploadParts:
    """The files and fields of an upload, not decoded yet."""

    images: bytes
    labels: bytes | None
    backend: str | None


@dataclass(frozen=True)
class Dataset:
    """Decoded images ``uint8[N, 28, 28]``, true labels ``int64[N]`` when given, and the backend asked for."""

    pixels: np.ndarray
    labels: np.ndarray | None
    backend: str | None


def split_multipart(body: bytes, content_type: str) -> dict[str, list[bytes]]:
    """Every part of a multipart/form-data body by field name, in order (python-multipart's streaming parser)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise RequestError("multipart/form-data body without a boundary", 400)
    parts: list[tuple[list[str], list[bytes]]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    ended: list[bool] = []

    def on_part_begin() -> None:
        parts.append(([], []))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if header["field"].strip().lower() == b"content-disposition":
            name = parse_options_header(header["value"])[1].get(b"name", b"")
            parts[-1][0].append(name.decode("latin-1"))
        header["field"] = header["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].append(data[start:end])

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data, "on_end": lambda: ended.append(True)}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise RequestError(f"malformed multipart/form-data body: {exc}", 400) from None
    if not ended:
        raise RequestError("malformed multipart/form-data body: it ends before the closing boundary", 400)
    fields: dict[str, list[bytes]] = {}
    for names, chunks in parts:
        fields.setdefault(names[0] if names else "", []).append(b"".join(chunks))
    return fields


def split_upload(upload: Upload) -> UploadParts:
    """The images file, the optional labels file and the backend, from a raw body or a multipart form."""
    if upload.media_type != "multipart/form-data":
        if not upload.body:
            raise RequestError("empty request body", 400)
        return UploadParts(upload.body, None, upload.backend)
    fields = split_multipart(upload.body, upload.content_type)
    unknown = sorted(set(fields) - FORM_FIELDS)
    if unknown:
        raise RequestError(f"unknown form field(s) {unknown}; expected 'images', optional 'labels' and 'backend'")
    for name, values in fields.items():
        if len(values) > 1:
            raise RequestError(f"form field {name!r} given {len(values)} times; send one dataset per task")
    if not fields.get("images") or not fields["images"][0]:
        raise RequestError("no dataset file in the 'images' field", 400)
    backend = form_value(fields["backend"][0].decode("utf-8", "replace")) if "backend" in fields else None
    return UploadParts(fields["images"][0], fields.get("labels", [None])[0], upload.backend or backend)


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


def not_a_dataset(data: bytes, name: str) -> RequestError:
    return RequestError(f"{name}: not a dataset file (expected .npy, .npz, or IDX, raw or gzipped; it starts with "
                        f"{data[:8].hex() or 'nothing'})", 415)


def gunzip(data: bytes, limit: int, name: str, too_many: str) -> bytes:
    """The decompressed content; refused (413, ``too_many`` says why) past ``limit`` bytes, never inflating more."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut stream raises EOFError
        raise RequestError(f"{name}: cannot be decompressed ({exc}); the file is truncated or corrupt", 422) from None
    if len(out) > limit:
        raise RequestError(f"{name}: {too_many}", 413)
    return out


def gunzip_idx(data: bytes, limit: int, name: str, too_many: str, not_idx: str) -> tuple[bytes, str]:
    """A gzipped upload inflated (at most ``limit`` bytes) and checked to hold IDX data; the bytes and ``"idx"``."""
    data = gunzip(data, limit, name, too_many)
    if sniff(data) != "idx":
        raise RequestError(f"{name}: {not_idx}", 415)
    return data, "idx"


def read_idx(data: bytes, name: str) -> np.ndarray:
    try:
        return parse_idx(data, name)
    except DataError as exc:
        raise RequestError(str(exc), 422) from None


def read_npy_header(stream: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` stream, read without touching its data; pickles refused."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as exc:
        raise RequestError(f"{name}: not a usable .npy array ({exc})", 422) from None
    if dtype.hasobject:
        raise RequestError(f"{name}: holds Python objects (a pickle); only plain numeric arrays are read", 422)
    if fortran and len(shape) > 1:
        raise RequestError(f"{name}: Fortran-ordered arrays are not read; save it in C order", 422)
    return shape, dtype


def read_npy(stream: BinaryIO, name: str, check) -> np.ndarray:
    """A ``.npy`` array whose header ``check(shape, dtype)`` accepted first: its data is read only then."""
    shape, dtype = read_npy_header(stream, name)
    check(shape, dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = stream.read(size)
    if len(data) != size:
        raise RequestError(f"{name}: {len(data):,} data bytes, the .npy header promises {size:,}; truncated", 422)
    if stream.read(1):  # also makes a zip member verify its CRC, which zipfile does at the end
        raise RequestError(f"{name}: data after the array; not a .npy file as numpy writes it", 422)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def image_check(name: str, max_images: int):
    """Accepts ``uint8[N, 28, 28]`` with ``1 <= N <= max_images``."""

    def check(shape: tuple[int, ...], dtype: np.dtype) -> None:
        if len(shape) != 3 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or dtype != np.uint8:
            raise RequestError(f"{name}: expected uint8 N x 28 x 28 images, got {dtype} {shape}", 422)
        if shape[0] == 0:
            raise RequestError(f"{name}: holds no images", 422)
        if shape[0] > max_images:
            raise RequestError(f"{name}: {shape[0]:,} images; a task takes at most {max_images:,}", 413)

    return check


def label_check(name: str, count: int):
    """Accepts whole-number labels, one per image."""

    def check(shape: tuple[int, ...], dtype: np.dtype) -> None:
        if shape != (count,) or dtype.kind not in "iu":
            raise RequestError(f"{name}: expected {count:,} integer class ids, got {dtype} {shape}", 422)

    return check


# What a damaged zip member raises: BadZipFile (bad CRC or header), zlib.error, EOFError (cut short),
# NotImplementedError (unknown compression), RuntimeError (encrypted member).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


@contextlib.contextmanager
def reading_zip(name: str) -> Iterator[None]:
    """Turns a damaged .npz into a 422 naming the array."""
    try:
        yield
    except ZIP_ERRORS as exc:
        raise RequestError(f"{name}: cannot be read from the .npz ({exc})", 422) from None


def read_npz(data: bytes, name: str, max_images: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (``images``, ``x`` or ``pixels``) and optional labels (``labels`` or ``y``) from an ``.npz``."""
    with reading_zip(name):
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {member.removesuffix(".npy"): member for member in archive.namelist()}
        image_key = next((k for k in IMAGE_KEYS if k in members), None)
        if image_key is None:
            raise RequestError(f"{name}: no 'images' (or 'x') array in the .npz; it has {sorted(members)[:10]}", 422)
        with reading_zip(f"{name}[{image_key}]"), archive.open(members[image_key]) as stream:
            pixels = read_npy(stream, f"{name}[{image_key}]", image_check(f"{name}[{image_key}]", max_images))
        label_key = next((k for k in LABEL_KEYS if k in members), None)
        if label_key is None:
            return pixels, None
        where = f"{name}[{label_key}]"
        with reading_zip(where), archive.open(members[label_key]) as stream:
            return pixels, read_npy(stream, where, label_check(where, len(pixels)))


def read_images(data: bytes, max_images: int, name: str = "images") -> tuple[np.ndarray, np.ndarray | None]:
    """``uint8[N, 28, 28]`` images from any accepted file, and the labels an ``.npz`` carries."""
    kind = sniff(data)
    if kind == "gzip":
        data, kind = gunzip_idx(data, IDX_IMAGES_HEADER + max_images * IMAGE_BYTES, name,
                                f"decompresses to more than {max_images:,} images, the most a task takes",
                                "a gzipped dataset must hold IDX images")
    if kind == "idx":
        array = read_idx(data, name)
        image_check(name, max_images)(array.shape, array.dtype)
        return array, None
    if kind == "npy":
        return read_npy(io.BytesIO(data), name, image_check(name, max_images)), None
    if kind == "npz":
        return read_npz(data, name, max_images)
    raise not_a_dataset(data, name)


def read_labels(data: bytes, count: int, name: str = "labels") -> np.ndarray:
    """``count`` class ids from an IDX labels file (raw or gzipped) or a ``.npy``."""
    kind = sniff(data)
    if kind == "gzip":
        data, kind = gunzip_idx(data, IDX_LABELS_HEADER + count, name,
                                f"holds more than the {count:,} labels of the images",
                                "a gzipped labels file must hold IDX labels")
    if kind == "idx":
        labels = read_idx(data, name)
        label_check(name, count)(labels.shape, labels.dtype)
    elif kind == "npy":
        labels = read_npy(io.BytesIO(data), name, label_check(name, count))
    else:
        raise not_a_dataset(data, name)
    return labels


def check_label_values(labels: np.ndarray, name: str) -> np.ndarray:
    """``int64`` class ids, all in ``0..9``."""
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise RequestError(f"{name}: class ids must be 0 to {NUM_CLASSES - 1}; found {labels.min()} to "
                           f"{labels.max()}", 422)
    return labels.astype(np.int64)


def read_dataset(upload: Upload, max_images: int) -> Dataset:
    """Decode and check a task's upload (runs in a worker thread).

    Raises:
        RequestError: naming the file and what is wrong with it, with the HTTP status it deserves.
    """
    parts = split_upload(upload)
    pixels, labels = read_images(parts.images, max_images)
    if parts.labels is not None:
        if labels is not None:
            raise RequestError("labels given twice: in the .npz and in the 'labels' field", 400)
        labels = read_labels(parts.labels, len(pixels))
    if labels is not None:
        labels = check_label_values(labels, "labels")
    return Dataset(pixels, labels, parts.backend)


def declared_count(upload: Upload) -> int | None:
    """How many images the upload's headers announce, read cheaply (at submit); ``None`` when unknown.

    Only headers are read: a gzip stream is inflated by 16 bytes, an array's data is not touched.
    Whatever cannot be read here is left to the task, which reports it.
    """
    try:
        data = split_upload(upload).images
        kind = sniff(data)
        if kind == "gzip":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                data, kind = stream.read(IDX_IMAGES_HEADER), "idx"
        if kind == "idx" and len(data) >= IDX_IMAGES_HEADER and data[3] == 3:
            return int(np.frombuffer(data, dtype=">u4", count=1, offset=4)[0])
        if kind == "npy":
            shape, _ = read_npy_header(io.BytesIO(data), "images")
            return shape[0] if shape else None
        if kind == "npz":
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = {member.removesuffix(".npy"): member for member in archive.namelist()}
            key = next((k for k in IMAGE_KEYS if k in members), None)
            if key is not None:
                with archive.open(members[key]) as stream:
                    shape, _ = read_npy_header(stream, "images")
                return shape[0] if shape else None
    except (RequestError, *ZIP_ERRORS):
        return None
    return None
