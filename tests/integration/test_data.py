"""The verified loader, the one split and the input contract, on the real files."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from fashion.contract import CLASS_NAMES, preprocess, softmax
from fashion.data import (
    IDX_FILES,
    DataError,
    DataNotFoundError,
    find_data_dir,
    idx_file_path,
    load_fashion_mnist,
    read_idx,
    train_val_split,
)


def test_shapes_and_dtypes(dataset):
    assert dataset.train_images.shape == (60000, 28, 28)
    assert dataset.test_images.shape == (10000, 28, 28)
    assert dataset.train_labels.shape == (60000,)
    assert dataset.test_labels.shape == (10000,)
    for array in (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels):
        assert array.dtype == np.uint8


def test_class_balance(dataset):
    assert np.bincount(dataset.train_labels).tolist() == [6000] * 10
    assert np.bincount(dataset.test_labels).tolist() == [1000] * 10


def test_split_sizes_and_stratification(dataset):
    split = train_val_split(dataset.train_labels)
    assert len(split.train) == 48000 and len(split.val) == 12000
    assert np.bincount(dataset.train_labels[split.train]).tolist() == [4800] * 10
    assert np.bincount(dataset.train_labels[split.val]).tolist() == [1200] * 10
    assert not np.intersect1d(split.train, split.val).size
    assert np.union1d(split.train, split.val).tolist() == list(range(60000))


def _split_digest(labels) -> str:
    split = train_val_split(labels)
    return hashlib.sha256(split.train.tobytes() + split.val.tobytes()).hexdigest()


def test_split_is_deterministic_within_and_across_processes(dataset, data_dir):
    here = _split_digest(dataset.train_labels)
    assert here == _split_digest(dataset.train_labels)
    code = (
        "import hashlib; from fashion.data import load_fashion_mnist, train_val_split\n"
        f"s = train_val_split(load_fashion_mnist({str(data_dir)!r}).train_labels)\n"
        "print(hashlib.sha256(s.train.tobytes() + s.val.tobytes()).hexdigest())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == here
    another_seed = train_val_split(dataset.train_labels, seed=1)
    assert not np.array_equal(another_seed.val, train_val_split(dataset.train_labels).val)


def _decompressed(data_dir, key) -> bytes:
    raw = idx_file_path(data_dir, IDX_FILES[key]).read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_flipped_byte_is_rejected_naming_the_file(data_dir, tmp_path, compress):
    spec = IDX_FILES["test_labels"]
    payload = bytearray(_decompressed(data_dir, "test_labels"))
    payload[5000] ^= 0x01
    path = tmp_path / (spec.name + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(bytes(payload)) if compress else bytes(payload))
    with pytest.raises(DataError, match="SHA-256") as err:
        read_idx(path, spec)
    assert str(path) in str(err.value)


def test_truncated_and_bad_header_are_rejected(data_dir, tmp_path):
    spec = IDX_FILES["test_labels"]
    payload = _decompressed(data_dir, "test_labels")
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(payload)[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(truncated, spec)
    assert "truncated.gz" in str(err.value)
    short = tmp_path / "short"
    short.write_bytes(payload[:-10])
    with pytest.raises(DataError, match="expected 10008"):
        read_idx(short, spec)
    header = tmp_path / "header"
    header.write_bytes(b"\x00\x00\x08\x03" + payload[4:])
    with pytest.raises(DataError, match="bad IDX header"):
        read_idx(header, spec)


def test_corrupt_file_in_a_data_dir_fails_the_whole_load(data_dir, tmp_path):
    for key, spec in IDX_FILES.items():
        payload = bytearray(_decompressed(data_dir, key))
        if key == "train_images":
            payload[-1] ^= 0xFF
        (tmp_path / spec.name).write_bytes(bytes(payload))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path)


def test_missing_data_without_network_gives_the_three_ways(tmp_path):
    empty = tmp_path / "empty"
    # Port 9 (discard) on loopback refuses at once: a machine with no route to the mirror.
    with pytest.raises(DataNotFoundError) as err:
        find_data_dir(search=(empty,), mirror="http://127.0.0.1:9/")
    message = str(err.value)
    assert str(empty) in message
    assert "FASHION_MNIST_DIR" in message and "dataset-fashion-mnist" in message and "network" in message
    assert not any(empty.glob("*.gz"))


def test_explicit_dir_missing_files_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte"):
        find_data_dir()


def test_contract():
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"
    pixels = np.array([[0, 255], [128, 1]], dtype=np.uint8)
    pixels = np.tile(pixels, (14, 14))
    x = preprocess(pixels)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    with pytest.raises(ValueError, match="uint8"):
        preprocess(pixels.astype(np.float32))
    with pytest.raises(ValueError, match="28 x 28"):
        preprocess(np.zeros((2, 27, 28), np.uint8))
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]]))
    assert np.allclose(probs.sum(axis=1), 1.0) and np.isfinite(probs).all()
    assert probs[0].argmax() == 0
