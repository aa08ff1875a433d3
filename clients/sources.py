"""Inputs of a batch job, streamed: folders, globs, IDX files and .npy/.npz arrays.

Every source yields :class:`Item` objects in a stable order, each with a stable id
(the path relative to the folder, or ``file#index``) so that a resumed job can
skip what is done. Files are read and decoded only when their batch is sent.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fashion.contract import CLASS_NAMES, IMAGE_SIZE
from fashion.data import DataError, read_idx_file

_SLUGS = {re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"): i for i, name in enumerate(CLASS_NAMES)}


class Item(NamedTuple):
    """One input: its id, where its pixels come from (a file, or an array row), and its label if known.

    A named tuple, not a dataclass: a million of them are made per million inputs.
    """

    id: str
    path: Path | None = None
    pixels: np.ndarray | None = None
    label: int | None = None


class SourceError(ValueError):
    """The input cannot be read at all (as opposed to one bad item in it)."""


def class_from_folder(name: str) -> int | None:
    """Class id of a folder named after a class (``Ankle boot``, ``ankle-boot``, ``9-ankle-boot``...)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"^\d+-", "", slug)
    return _SLUGS.get(slug)


def iter_folder(root: Path) -> Iterator[Item]:
    """Every non-hidden file below ``root``, sorted, recursively; labels from class-named parent folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder) / name
            yield Item(id=path.relative_to(root).as_posix(), path=path, label=class_from_folder(path.parent.name)
                       if path.parent != root else None)


def iter_glob(pattern: str) -> Iterator[Item]:
    """Files matching a glob pattern (``**`` recursive), sorted; ids are the paths as matched."""
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_file():
            yield Item(id=match, path=path, label=class_from_folder(path.parent.name))


def _check_pixels(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or array.dtype != np.uint8:
        raise SourceError(f"{where}: expected uint8 N x 28 x 28 images, got {array.dtype} {array.shape}")
    return array


def _check_labels(labels: np.ndarray | None, count: int, where: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (count,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(CLASS_NAMES):
        raise SourceError(f"{where}: labels must be {count} class ids 0-9, got shape {labels.shape}")
    return labels.astype(np.int64)


def iter_array(pixels: np.ndarray, labels: np.ndarray | None, name: str) -> Iterator[Item]:
    label_list = labels.tolist() if labels is not None else [None] * len(pixels)
    for i, (image, label) in enumerate(zip(pixels, label_list, strict=True)):
        yield Item(f"{name}#{i}", None, image, label)


def load_idx(images: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """IDX images and optional labels; a sibling labels file (``...-labels-idx1-ubyte``) is found by name."""
    if labels is None:
        sibling = images.with_name(images.name.replace("-images-idx3", "-labels-idx1"))
        labels = sibling if sibling != images and sibling.exists() else None
    try:
        pixels = _check_pixels(read_idx_file(images), str(images))
        return pixels, _check_labels(read_idx_file(labels) if labels else None, len(pixels), str(labels))
    except DataError as exc:
        raise SourceError(str(exc)) from exc


def load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A .npy of images, or a .npz with ``images`` (or ``x``) and optional ``labels`` (or ``y``)."""
    try:
        if path.suffix == ".npy":
            return _check_pixels(np.load(path, mmap_mode="r", allow_pickle=False), str(path)), None
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("images", "x", "pixels") if k in archive), None)
            if key is None:
                raise SourceError(f"{path}: no 'images' (or 'x') array; has {sorted(archive.files)}")
            pixels = _check_pixels(archive[key], f"{path}[{key}]")
            label_key = next((k for k in ("labels", "y") if k in archive), None)
            return pixels, _check_labels(archive[label_key] if label_key else None, len(pixels), str(path))
    except (OSError, ValueError) as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(f"{path}: cannot be read as a numpy array file ({exc})") from exc


def open_source(spec: str, labels: Path | None = None) -> tuple[Iterator[Item], int | None]:
    """The items of an input and their count when it is known up front (arrays, IDX), else ``None``."""
    path = Path(spec)
    if path.is_dir():
        return iter_folder(path), None
    if path.is_file() and re.search(r"idx\d-ubyte(\.gz)?$", path.name):
        pixels, known = load_idx(path, labels)
        return iter_array(pixels, known, path.name), len(pixels)
    if path.is_file() and path.suffix in (".npy", ".npz"):
        pixels, known = load_arrays(path)
        return iter_array(pixels, known, path.name), len(pixels)
    if any(ch in spec for ch in "*?["):
        return iter_glob(spec), None
    if path.is_file():
        return iter([Item(id=path.name, path=path)]), 1
    raise SourceError(f"{spec}: no such folder, file or glob match")
