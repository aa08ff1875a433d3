"""Inputs of a batch job, streamed in chunks: folders, globs, IDX files and .npy/.npz arrays.

Every source yields :class:`Chunk` objects in a stable order, each covering the next
``size`` inputs with stable ids (the path relative to the folder, or ``file#index``),
so that a resumed job can start at any input position. Array files are read chunk by
chunk into fresh buffers (never memory-mapped: mapped pages would count towards the
job's memory until the whole file had been touched), so a job of any size holds a few
chunks at a time. Image files are decoded only when their chunk is read.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fashion.contract import CLASS_NAMES, IMAGE_SIZE
from fashion.data import DataError, read_idx_file
from fashion.imaging import ImageError, decode_image

IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE
NO_LABEL = -1
_SLUGS = {re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"): i for i, name in enumerate(CLASS_NAMES)}


class SourceError(ValueError):
    """The input cannot be read at all (as opposed to one bad item in it)."""


@dataclass(frozen=True)
class IdRange:
    """The ids ``{name}#{first}`` ... ``{name}#{first + count - 1}`` of a chunk of array rows, never spelled out."""

    name: str
    first: int
    count: int


@dataclass(frozen=True)
class Chunk:
    """The next inputs of a source: the readable ones' pixels, labels and ids, and the unreadable ones.

    Attributes:
        start: input position of the chunk's first item.
        count: inputs the chunk covers, readable or not.
        pixels: ``uint8[n, 28, 28]``, the readable inputs in order.
        labels: ``int8[n]`` true class ids, :data:`NO_LABEL` where unknown.
        ids: the readable inputs' ids: an :class:`IdRange` (array rows) or a tuple of strings (files).
        failed: ``(id, reason)`` of each unreadable input, in order.
    """

    start: int
    count: int
    pixels: np.ndarray
    labels: np.ndarray
    ids: IdRange | tuple[str, ...]
    failed: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class FileItem:
    """One image file and its label if its folder names a class."""

    id: str
    path: Path
    label: int | None = None


def class_from_folder(name: str) -> int | None:
    """Class id of a folder named after a class (``Ankle boot``, ``ankle-boot``, ``9-ankle-boot``...)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"^\d+-", "", slug)
    return _SLUGS.get(slug)


def iter_folder(root: Path) -> Iterator[FileItem]:
    """Every non-hidden file below ``root``, sorted, recursively; labels from class-named parent folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder) / name
            yield FileItem(path.relative_to(root).as_posix(), path,
                           class_from_folder(path.parent.name) if path.parent != root else None)


def iter_glob(pattern: str) -> Iterator[FileItem]:
    """Files matching a glob pattern (``**`` recursive), sorted; ids are the paths as matched."""
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_file():
            yield FileItem(match, path, class_from_folder(path.parent.name))


def decode_files(start: int, items: list[FileItem]) -> Chunk:
    """Decode a chunk of image files; the unreadable ones are listed with the reason."""
    pixels = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    labels, ids, failed = [], [], []
    for item in items:
        try:
            pixels[len(ids)] = decode_image(item.path.read_bytes())
        except (ImageError, OSError) as exc:
            failed.append((item.id, str(exc)))
            continue
        ids.append(item.id)
        labels.append(NO_LABEL if item.label is None else item.label)
    return Chunk(start, len(items), pixels[:len(ids)], np.array(labels, np.int8), tuple(ids), tuple(failed))


@dataclass
class FileSource:
    """Image files, in the order ``list_items`` gives them; decoded chunk by chunk."""

    list_items: Callable[[], Iterator[FileItem]]
    total: int | None = None

    def chunks(self, start: int, size: int) -> Iterator[Chunk]:
        """Chunks of ``size`` files from input position ``start`` on."""
        batch: list[FileItem] = []
        position = start
        for seq, item in enumerate(self.list_items()):
            if seq < start:
                continue
            batch.append(item)
            if len(batch) == size:
                yield decode_files(position, batch)
                position += len(batch)
                batch = []
        if batch:
            yield decode_files(position, batch)


@dataclass
class ArraySource:
    """``uint8[N, 28, 28]`` rows stored contiguously in a file (.npy, .npz member, IDX raw or gzipped).

    ``open_data`` opens the file positioned at the first pixel of row 0.
    """

    name: str
    open_data: Callable[[], BinaryIO]
    total: int
    labels: np.ndarray | None = None

    def chunks(self, start: int, size: int) -> Iterator[Chunk]:
        """Chunks of ``size`` rows from row ``start`` on, each read into a buffer of its own."""
        with self.open_data() as stream:
            if start:
                stream.seek(start * IMAGE_BYTES, os.SEEK_CUR)
            for first in range(start, self.total, size):
                count = min(size, self.total - first)
                pixels = np.empty((count, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
                read = stream.readinto(memoryview(pixels).cast("B"))
                if read != pixels.nbytes:
                    raise SourceError(f"{self.name}: ends after {first + read // IMAGE_BYTES:,} of {self.total:,} "
                                      "images; the file is truncated")
                labels = (self.labels[first:first + count] if self.labels is not None
                          else np.full(count, NO_LABEL, np.int8))
                yield Chunk(first, count, pixels, labels, IdRange(self.name, first, count))


def _check_shape(shape: tuple[int, ...], dtype: np.dtype, where: str) -> int:
    if len(shape) != 3 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or dtype != np.uint8:
        raise SourceError(f"{where}: expected uint8 N x 28 x 28 images, got {dtype} {shape}")
    return shape[0]


def _check_labels(labels: np.ndarray | None, count: int, where: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (count,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(CLASS_NAMES):
        raise SourceError(f"{where}: labels must be {count} class ids 0-9, got shape {labels.shape}")
    return labels.astype(np.int8)


def read_npy_header(stream: BinaryIO, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy stream, leaving it at the first data byte; pickles and Fortran order refused."""
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
    except ValueError as exc:
        raise SourceError(f"{where}: not a usable .npy array ({exc})") from None
    if dtype.hasobject or (fortran and len(shape) > 1):
        raise SourceError(f"{where}: only C-ordered plain numeric arrays are read")
    return shape, dtype


def npy_source(path: Path) -> ArraySource:
    """A .npy file of images."""
    def open_data() -> BinaryIO:
        stream = path.open("rb")
        read_npy_header(stream, str(path))
        return stream

    with path.open("rb") as stream:
        total = _check_shape(*read_npy_header(stream, str(path)), str(path))
    return ArraySource(path.name, open_data, total)


def npz_source(path: Path) -> ArraySource:
    """A .npz with ``images`` (or ``x``, ``pixels``) and optional ``labels`` (or ``y``); images streamed."""
    try:
        archive = zipfile.ZipFile(path)
        members = {m.removesuffix(".npy"): m for m in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{path}: cannot be read as a numpy array file ({exc})") from None
    key = next((k for k in ("images", "x", "pixels") if k in members), None)
    if key is None:
        raise SourceError(f"{path}: no 'images' (or 'x') array; has {sorted(members)}")

    def open_data() -> BinaryIO:
        stream = zipfile.ZipFile(path).open(members[key])  # noqa: SIM115 (the member keeps the archive open)
        read_npy_header(stream, f"{path}[{key}]")
        return stream

    with archive.open(members[key]) as stream:
        total = _check_shape(*read_npy_header(stream, f"{path}[{key}]"), f"{path}[{key}]")
    label_key = next((k for k in ("labels", "y") if k in members), None)
    labels = None
    if label_key:
        with archive.open(members[label_key]) as stream:
            labels = _check_labels(np.lib.format.read_array(stream, allow_pickle=False), total, str(path))
    return ArraySource(path.name, open_data, total, labels)


def _open_maybe_gzipped(path: Path) -> BinaryIO:
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def idx_source(images: Path, labels: Path | None) -> ArraySource:
    """IDX images (raw or gzipped) and optional labels; a sibling labels file (``...-labels-idx1``) is found by name."""
    if labels is None:
        sibling = images.with_name(images.name.replace("-images-idx3", "-labels-idx1"))
        labels = sibling if sibling != images and sibling.exists() else None
    try:
        with _open_maybe_gzipped(images) as stream:
            header = stream.read(16)
    except (OSError, EOFError) as exc:
        raise SourceError(f"{images}: cannot be read ({exc})") from None
    if len(header) < 16 or header[:4] != b"\x00\x00\x08\x03":
        raise SourceError(f"{images}: not an unsigned-byte IDX images file (header {header[:4].hex()})")
    total, rows, cols = (int(d) for d in np.frombuffer(header, ">u4", 3, 4))
    _check_shape((total, rows, cols), np.dtype(np.uint8), str(images))

    def open_data() -> BinaryIO:
        stream = _open_maybe_gzipped(images)
        stream.seek(16)
        return stream

    try:
        known = _check_labels(read_idx_file(labels) if labels else None, total, str(labels))
    except DataError as exc:
        raise SourceError(str(exc)) from exc
    return ArraySource(images.name, open_data, total, known)


def open_source(spec: str, labels: Path | None = None) -> FileSource | ArraySource:
    """The source named by a folder, glob, IDX file, .npy/.npz or single image path."""
    path = Path(spec)
    if path.is_dir():
        return FileSource(lambda: iter_folder(path))
    if path.is_file() and re.search(r"idx\d-ubyte(\.gz)?$", path.name):
        return idx_source(path, labels)
    if path.is_file() and path.suffix == ".npy":
        return npy_source(path)
    if path.is_file() and path.suffix == ".npz":
        return npz_source(path)
    if any(ch in spec for ch in "*?["):
        return FileSource(lambda: iter_glob(spec))
    if path.is_file():
        return FileSource(lambda: iter([FileItem(path.name, path)]), 1)
    raise SourceError(f"{spec}: no such folder, file or glob match")
