"""The request bodies of the benchmark's HTTP rows (benchmark.http): each says what the service must parse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.http import _bodies

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def test_the_v2_rows_carry_the_same_images_as_the_native_ones(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    bodies = _bodies(images, tmp_path)
    assert set(bodies) == {"single-png", "batch-png", "batch-npy", "batch-json", "v2-binary", "v2-json"}
    path, content_type, header = bodies["v2-binary"]
    length = int(header.removeprefix("Inference-Header-Content-Length: "))
    raw = path.read_bytes()
    request = json.loads(raw[:length])
    assert request["inputs"][0]["shape"] == [3, 28, 28] and request["inputs"][0]["datatype"] == "UINT8"
    assert np.array_equal(np.frombuffer(raw[length:], np.uint8).reshape(images.shape), images)
    path, content_type, header = bodies["v2-json"]
    data = json.loads(path.read_text())["inputs"][0]["data"]
    assert content_type == "application/json" and header == "" and data == images.ravel().tolist()
    assert json.loads(bodies["batch-json"][0].read_text())["pixels"] == images.tolist()
