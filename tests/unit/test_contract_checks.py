"""The one pixel/label validator (fashion.contract) and the one array-file reader (fashion.arrays): each refusal
names its rule, which every layer maps to its own answer."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest

from fashion import arrays
from fashion.contract import (
    EMPTY,
    LABELS,
    MALFORMED,
    NOT_ARRAYS,
    SHAPE,
    TOO_MANY,
    VALUES,
    ContractError,
    check_labels,
    check_pixel_values,
    check_pixels,
)
from fashion.metrics import agreement


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


@pytest.mark.parametrize(("data", "reason"), [
    ([[0] * 28, [0]], MALFORMED),
    (np.zeros((1, 28, 27)), SHAPE),
    (np.zeros((0, 28, 28)), EMPTY),
    (np.zeros((5, 28, 28)), TOO_MANY),
    (np.full((1, 28, 28), 0.5), VALUES),
    (np.full((1, 28, 28), np.nan), VALUES),
    (np.full((1, 28, 28), 256), VALUES),
])
def test_each_broken_pixel_rule_has_its_reason(data, reason):
    with pytest.raises(ContractError) as caught:
        check_pixels(data, max_images=4)
    assert caught.value.reason == reason and caught.value.message


def test_whole_numbers_become_uint8_and_one_image_is_a_batch():
    pixels = check_pixels(np.full((28, 28), 7.0), max_images=4)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 28, 28) and pixels.max() == 7


def test_integers_only_refuses_whole_floats():
    with pytest.raises(ContractError, match="whole numbers"):
        check_pixel_values(np.full((1, 28, 28), 3.0), integers_only=True)


@pytest.mark.parametrize("labels", [np.zeros(3, np.float32), np.zeros(2, np.int64), np.array([0, 10, 1])])
def test_labels_of_the_wrong_count_type_or_range_are_refused(labels):
    with pytest.raises(ContractError) as caught:
        check_labels(labels, 3)
    assert caught.value.reason == LABELS


@pytest.mark.parametrize(("data", "reason"), [
    (b"hello", NOT_ARRAYS),
    (npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), MALFORMED),
    (npy(np.zeros((2, 28, 28), np.uint8))[:-5], MALFORMED),
])
def test_unreadable_array_files_are_refused(data, reason):
    def read() -> None:
        if arrays.sniff(data) != "npy":
            raise arrays.not_arrays(data, "upload")
        arrays.read_npy(io.BytesIO(data), "upload", lambda shape, dtype: None)

    with pytest.raises(ContractError) as caught:
        read()
    assert caught.value.reason == reason


def test_a_gzip_bomb_is_inflated_no_further_than_the_limit():
    with pytest.raises(ContractError) as caught:
        arrays.gunzip(gzip.compress(bytes(10_000_000)), 1000, "bomb", "too big")
    assert caught.value.reason == TOO_MANY


def test_declared_counts_are_read_from_headers():
    images = np.zeros((3, 28, 28), np.uint8)
    idx = b"\x00\x00\x08\x03" + np.array([3, 28, 28], ">u4").tobytes() + images.tobytes()
    assert arrays.declared_image_count(npy(images)) == 3
    assert arrays.declared_image_count(gzip.compress(idx)) == 3
    assert arrays.parse_idx(idx).shape == (3, 28, 28)
    assert arrays.declared_image_count(b"junk") is None


def test_agreement_counts_top1_and_probability_differences():
    a = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]], np.float32)
    b = np.array([[2.0, 0.0], [2.0, 0.0], [1.0, 0.0]], np.float32)
    found = agreement(a, b)
    assert found.disagreements.tolist() == [1] and found.top1_agreement == pytest.approx(2 / 3)
    assert not found.within(1.0) and agreement(a, a).within(0.0)
