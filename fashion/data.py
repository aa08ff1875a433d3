"""Find, verify and load the four official Fashion-MNIST IDX files.

Where the files are looked for, in order:

1. an explicit directory (``data_dir`` argument, ``--data-dir``, or the
   ``FASHION_MNIST_DIR`` environment variable) -- used alone when given;
2. the project-local folder ``data/fashion-mnist`` (or ``FASHION_MNIST_CACHE``);
3. ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu ``dataset-fashion-mnist``);
4. otherwise the official files are downloaded from the upstream mirror into
   the project-local folder, checked against upstream's MD5s.

Every file may be plain or gzipped. Its *decompressed* bytes are checked
against the official SHA-256 (Debian recompresses the .gz files, so their
own checksums differ from upstream's), its size and its IDX header; any
mismatch raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashion.contract import IMAGE_SIZE, NUM_CLASSES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_DIR = PROJECT_ROOT / "data" / "fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


@dataclass(frozen=True)
class IdxFile:
    """One official file: its name, decompressed size and SHA-256, upstream .gz MD5."""

    name: str
    size: int
    sha256: str
    gz_md5: str
    count: int
    is_images: bool


# Checksums of the decompressed content (Debian recompresses the .gz files), the official files' values;
# docs/training.md says where the files are looked for.
IDX_FILES: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte", 47040016,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 60000, True,
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte", 60008,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "25c81989df183df01b3e8a0aad5dffbe", 60000, False,
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte", 7840016,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "bef4ecab320f06d8554ea6380940ec79", 10000, True,
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte", 10008,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "bb300cfdad3c16e7a12a480ee83cd310", 10000, False,
    ),
}

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class DataError(RuntimeError):
    """A data file is corrupt, truncated or not what it claims to be."""


class DataNotFoundError(DataError):
    """The dataset is not on this machine and could not be downloaded."""


@dataclass(frozen=True)
class FashionMNIST:
    """The whole dataset as uint8 images ``(N, 28, 28)`` and uint8 labels ``(N,)``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class Split:
    """Indices into the 60,000 training images: the one train/validation split."""

    train: np.ndarray
    val: np.ndarray


def idx_file_path(directory: Path, spec: IdxFile) -> Path | None:
    """The file for ``spec`` in ``directory``, plain or gzipped, or None when neither is there."""
    for name in (spec.name, spec.name + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    return None


def has_dataset(directory: Path) -> bool:
    """True when all four files (plain or gzipped) are in ``directory``."""
    return all(idx_file_path(directory, spec) for spec in IDX_FILES.values())


def _not_found_message(looked_in: list[Path], reason: str) -> str:
    places = "\n".join(f"  - {p}" for p in looked_in)
    return (
        "Fashion-MNIST is not on this machine.\n"
        f"Looked in:\n{places}\n"
        f"Download failed: {reason}\n"
        "Provide it in one of three ways:\n"
        "  1. point --data-dir or FASHION_MNIST_DIR at a folder holding the four IDX files\n"
        "     (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,\n"
        "     t10k-labels-idx1-ubyte; plain or .gz);\n"
        f"  2. install the system package: apt-get install dataset-fashion-mnist ({SYSTEM_DIR});\n"
        f"  3. allow network access to {MIRROR} so the files download into {LOCAL_DIR}."
    )


def find_data_dir(
    data_dir: str | Path | None = None,
    *,
    search: tuple[Path, ...] | None = None,
    download: bool = True,
    mirror: str | None = None,
) -> Path:
    """Return the folder holding the four IDX files, downloading them if needed.

    Args:
        data_dir: explicit folder; overrides ``FASHION_MNIST_DIR``. When either is
            set it is the only place looked at.
        search: folders to look in otherwise (default: local folder, system folder).
        download: whether to fetch from the mirror when nothing is found.
        mirror: base URL to download from (default ``FASHION_MNIST_MIRROR`` or upstream).

    Returns:
        The folder.

    Raises:
        DataNotFoundError: nothing found and the download failed or was not allowed.
    """
    explicit = data_dir or os.environ.get("FASHION_MNIST_DIR")
    if explicit:
        directory = Path(explicit).expanduser()
        if not has_dataset(directory):
            missing = [s.name for s in IDX_FILES.values() if not idx_file_path(directory, s)]
            raise DataNotFoundError(
                f"{directory} (from --data-dir/FASHION_MNIST_DIR) lacks: {', '.join(missing)}"
            )
        return directory
    local = Path(os.environ.get("FASHION_MNIST_CACHE", LOCAL_DIR))
    folders = list(search) if search is not None else [local, SYSTEM_DIR]
    for directory in folders:
        if has_dataset(directory):
            return directory
    if not download:
        raise DataNotFoundError(_not_found_message(folders, "downloading was not allowed"))
    mirror = mirror or os.environ.get("FASHION_MNIST_MIRROR", MIRROR)
    target = folders[0] if folders else local
    try:
        download_dataset(target, mirror)
    except (OSError, urllib.error.URLError, DataError) as exc:
        raise DataNotFoundError(_not_found_message(folders, f"{mirror}: {exc}")) from exc
    return target


def download_dataset(target: Path, mirror: str = MIRROR, timeout: float = 10.0) -> None:
    """Download the four .gz files into ``target``, verifying upstream's MD5s.

    Each file is written under a temporary name and renamed only once verified,
    so an interrupted download never leaves a file that looks complete.
    """
    target.mkdir(parents=True, exist_ok=True)
    for spec in IDX_FILES.values():
        dest = target / (spec.name + ".gz")
        if dest.is_file():
            continue
        url = mirror.rstrip("/") + "/" + spec.name + ".gz"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
        md5 = hashlib.md5(payload).hexdigest()
        if md5 != spec.gz_md5:
            raise DataError(f"{url}: MD5 {md5} does not match upstream's {spec.gz_md5}")
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{spec.name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, dest)


def _read_decompressed(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be decompressed ({exc}); the file is truncated or corrupt") from exc


def read_idx(path: str | Path, spec: IdxFile) -> np.ndarray:
    """Read and verify one IDX file.

    Args:
        path: the file, plain or gzipped.
        spec: what the file must be (size, checksum, count, images or labels).

    Returns:
        uint8 images ``(count, 28, 28)`` or labels ``(count,)``; a read-only view
        of the file's bytes, no per-image copying.

    Raises:
        DataError: naming the file and what is wrong with it.
    """
    path = Path(path)
    data = _read_decompressed(path)
    if len(data) != spec.size:
        raise DataError(
            f"{path}: {len(data)} bytes after decompression, expected {spec.size} "
            f"for {spec.name} (truncated or wrong file)"
        )
    magic, count = np.frombuffer(data, dtype=">u4", count=2)
    expected_magic = _IMAGES_MAGIC if spec.is_images else _LABELS_MAGIC
    if magic != expected_magic or count != spec.count:
        raise DataError(
            f"{path}: bad IDX header (magic {int(magic):#010x}, count {int(count)}); "
            f"expected magic {expected_magic:#010x} and count {spec.count}"
        )
    header = 16 if spec.is_images else 8
    if spec.is_images:
        rows, cols = np.frombuffer(data, dtype=">u4", count=2, offset=8)
        if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise DataError(
            f"{path}: SHA-256 of the decompressed content is {digest}, expected "
            f"{spec.sha256} (the file is corrupt or not the official {spec.name})"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if spec.is_images:
        return array.reshape(spec.count, IMAGE_SIZE, IMAGE_SIZE)
    if array.max() >= NUM_CLASSES:
        raise DataError(f"{path}: label {int(array.max())} is out of range")
    return array


def load_fashion_mnist(data_dir: str | Path | None = None, *, download: bool = True) -> FashionMNIST:
    """Load all 70,000 verified images and labels.

    Args:
        data_dir: explicit folder (see :func:`find_data_dir`).
        download: whether a missing dataset may be downloaded.

    Returns:
        The dataset; arrays are read-only.
    """
    directory = find_data_dir(data_dir, download=download)
    arrays = {key: read_idx(idx_file_path(directory, spec), spec) for key, spec in IDX_FILES.items()}
    return FashionMNIST(**arrays)


def train_val_split(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The one seeded, stratified train/validation split of the training images.

    The same ``labels`` and ``seed`` give the same indices in every process and
    on every platform (numpy's PCG64), so both frameworks see the same samples.

    Args:
        labels: the training labels ``(N,)``.
        val_fraction: share of each class held out for validation.
        seed: split seed; keep the default unless you mean another split.

    Returns:
        Sorted train and validation indices.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(len(members) * val_fraction)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return Split(train=np.sort(np.concatenate(train)), val=np.sort(np.concatenate(val)))

