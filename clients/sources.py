"""Inputs of a batch job, streamed in chunks: folders, globs, IDX files and .npy/.npz arrays.

Every source yields :class:`Chunk` objects in a stable order, each covering the next
``size`` inputs with stable ids (the path relative to the folder, or ``file#index``),
so that a resumed job can start at any input position. Array files are read chunk by
chunk into fresh buffers (never memory-mapped: mapped pages would count towards the
job's memory until the whole file had been touched), so a job of any size holds a few
chunks at a time. Image files are decoded only when their chunk is read.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fashion.arrays import (
    IDX_IMAGES_HEADER,
    idx_dims,
    npz_keys,
    open_maybe_gzipped,
    open_npz,
    read_idx_file,
    read_npy_header,
    reading_zip,
)
from fashion.contract import CLASS_NAMES, IMAGE_SIZE, ContractError, check_image_header, check_labels
from fashion.imaging import ImageError, decode_image

IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE
NO_LABEL = -1
_SLUGS = {re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"): i for i, name in enumerate(CLASS_NAMES)}


class SourceError(ValueError):
    """The input cannot be read at all (as opposed to one bad item in it)."""


@contextlib.contextmanager
def reading_source() -> Iterator[None]:
    """A broken contract or an unreadable array file (fashion.contract, fashion.arrays) as the CLI's error."""
    try:
        yield
    except ContractError as exc:
        raise SourceError(exc.message) from None


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


def _check_labels(labels: np.ndarray | None, count: int, where: str) -> np.ndarray | None:
    return None if labels is None else check_labels(labels, count, f"{where}: labels: ").astype(np.int8)


def npy_source(path: Path) -> ArraySource:
    """A .npy file of images."""
    def open_data() -> BinaryIO:
        stream = path.open("rb")
        read_npy_header(stream, str(path))
        return stream

    with path.open("rb") as stream, reading_source():
        total = check_image_header(*read_npy_header(stream, str(path)), where=f"{path}: ")
    return ArraySource(path.name, open_data, total)


def npz_source(path: Path) -> ArraySource:
    """A .npz with ``images`` (or ``x``, ``pixels``) and optional ``labels`` (or ``y``); images streamed."""
    with reading_source():
        archive = open_npz(path, str(path))
        with reading_zip(str(path)):
            key, member, _, label_member = npz_keys(archive, str(path))
            where = f"{path}[{key}]"
            with archive.open(member) as stream:
                total = check_image_header(*read_npy_header(stream, where), where=f"{where}: ")
            labels = None
            if label_member:
                with archive.open(label_member) as stream:
                    labels = _check_labels(np.lib.format.read_array(stream, allow_pickle=False), total, str(path))

    def open_data() -> BinaryIO:
        stream = open_npz(path, str(path)).open(member)
        read_npy_header(stream, where)
        return stream

    return ArraySource(path.name, open_data, total, labels)


def idx_source(images: Path, labels: Path | None) -> ArraySource:
    """IDX images (raw or gzipped) and optional labels; a sibling labels file (``...-labels-idx1``) is found by name."""
    if labels is None:
        sibling = images.with_name(images.name.replace("-images-idx3", "-labels-idx1"))
        labels = sibling if sibling != images and sibling.exists() else None
    try:
        with open_maybe_gzipped(images) as stream:
            header = stream.read(IDX_IMAGES_HEADER)
    except (OSError, EOFError) as exc:
        raise SourceError(f"{images}: cannot be read ({exc})") from None
    with reading_source():
        dims = idx_dims(header, str(images))
        total = check_image_header(dims, np.dtype(np.uint8), where=f"{images}: ")
        known = _check_labels(read_idx_file(labels) if labels else None, total, str(labels))

    def open_data() -> BinaryIO:
        stream = open_maybe_gzipped(images)
        stream.seek(IDX_IMAGES_HEADER)
        return stream

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
