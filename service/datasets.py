"""Reading an uploaded dataset for a task: ``.npy``, ``.npz`` or IDX (raw or gzipped), bounded.

What a client sends to ``/classify_dataset/submit``: one dataset file as the raw body, or a
multipart form with the file in ``images``, an optional IDX/``.npy`` labels file in ``labels``
and an optional ``backend`` field. The file's first bytes choose the parser (as for images, the
Content-Type and file name never do). The files are read by fashion.arrays
(bounded: headers before data, gzip inflated no further than the image limit allows, no pickles)
and checked by fashion.contract. Every refusal is a :class:`~service.inputs.RequestError` with
the status it deserves (413 too many images, 415 not a dataset file, 422 corrupt or the wrong
shape, 400 a malformed form).

These functions are synchronous and run in a worker thread: parsing an upload of the task limit must not stall the
event loop that answers online requests.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from fashion.arrays import (
    IDX_IMAGES_HEADER,
    IDX_LABELS_HEADER,
    HeaderCheck,
    declared_image_count,
    gunzip,
    not_arrays,
    parse_idx,
    read_npy,
    read_npz,
    sniff,
)
from fashion.contract import (
    IMAGE_SIZE,
    NOT_ARRAYS,
    TOO_MANY,
    ContractError,
    check_image_header,
    check_label_header,
    check_labels,
)
from service.inputs import RequestError, form_value, split_form

IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE
# How a task answers a broken contract (fashion.contract.ContractError.reason); anything else is 422.
TASK_STATUS = {TOO_MANY: 413, NOT_ARRAYS: 415}
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
    """Every part of a multipart/form-data body by field name, in order (service.inputs.split_form)."""
    fields: dict[str, list[bytes]] = {}
    for part in split_form(body, content_type):
        fields.setdefault(part.name, []).append(part.data)
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


def image_check(name: str, max_images: int) -> HeaderCheck:
    """Accepts ``uint8[N, 28, 28]`` with ``1 <= N <= max_images`` (fashion.contract)."""
    return lambda shape, dtype: check_image_header(shape, dtype, max_images, f"{name}: ", "a task")


def label_check(name: str, count: int) -> HeaderCheck:
    """Accepts whole-number labels, one per image (their range is checked once read)."""
    return lambda shape, dtype: check_label_header(shape, dtype, count, f"{name}: ")


def inflate_idx(data: bytes, limit: int, name: str, too_many: str, not_idx: str) -> bytes:
    """A gzipped upload inflated (at most ``limit`` bytes) and checked to hold IDX data."""
    data = gunzip(data, limit, name, too_many)
    if sniff(data) != "idx":
        raise ContractError(f"{name}: {not_idx}", NOT_ARRAYS)
    return data


def read_images(data: bytes, max_images: int, name: str = "images") -> tuple[np.ndarray, np.ndarray | None]:
    """``uint8[N, 28, 28]`` images from any accepted file, and the labels an ``.npz`` carries."""
    kind = sniff(data)
    if kind == "gzip":
        data, kind = inflate_idx(data, IDX_IMAGES_HEADER + max_images * IMAGE_BYTES, name,
                                 f"decompresses to more than {max_images:,} images, the most a task takes",
                                 "a gzipped dataset must hold IDX images"), "idx"
    if kind == "idx":
        array = parse_idx(data, name)
        image_check(name, max_images)(array.shape, array.dtype)
        return array, None
    if kind == "npy":
        return read_npy(io.BytesIO(data), name, image_check(name, max_images)), None
    if kind == "npz":
        return read_npz(data, name, image_check(name, max_images), label_check)
    raise not_arrays(data, name)


def read_labels(data: bytes, count: int, name: str = "labels") -> np.ndarray:
    """``count`` class ids from an IDX labels file (raw or gzipped) or a ``.npy``."""
    kind = sniff(data)
    if kind == "gzip":
        data, kind = inflate_idx(data, IDX_LABELS_HEADER + count, name,
                                 f"holds more than the {count:,} labels of the images",
                                 "a gzipped labels file must hold IDX labels"), "idx"
    if kind == "idx":
        labels = parse_idx(data, name)
        label_check(name, count)(labels.shape, labels.dtype)
    elif kind == "npy":
        labels = read_npy(io.BytesIO(data), name, label_check(name, count))
    else:
        raise not_arrays(data, name)
    return labels


def refusal(exc: ContractError) -> RequestError:
    """A broken contract as a task's failure: 413 over the task's image limit, 415 not an array file, else 422."""
    return RequestError(exc.message, TASK_STATUS.get(exc.reason, 422))


def read_dataset(upload: Upload, max_images: int) -> Dataset:
    """Decode and check a task's upload (runs in a worker thread).

    Raises:
        RequestError: naming the file and what is wrong with it, with the HTTP status it deserves.
    """
    parts = split_upload(upload)
    try:
        pixels, labels = read_images(parts.images, max_images)
        if parts.labels is not None:
            if labels is not None:
                raise RequestError("labels given twice: in the .npz and in the 'labels' field", 400)
            labels = read_labels(parts.labels, len(pixels))
        if labels is not None:
            labels = check_labels(labels, len(labels), "labels: ")
    except ContractError as exc:
        raise refusal(exc) from None
    return Dataset(pixels, labels, parts.backend)


def declared_count(upload: Upload) -> int | None:
    """How many images the upload's headers announce, read cheaply (at submit); ``None`` when unknown.

    Whatever cannot be read here is left to the task, which reports it.
    """
    try:
        return declared_image_count(split_upload(upload).images)
    except RequestError:
        return None
