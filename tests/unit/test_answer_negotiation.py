"""Choosing the answer's media type from Accept (service.answers.negotiate), and the compact rows themselves."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fashion.contract import ANSWER_DTYPE, answer_records, softmax
from service.answers import JSON, NPY, negotiate, records_response
from service.inputs import RequestError


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, JSON), ("", JSON), ("*/*", JSON), ("application/json", JSON), ("application/*", JSON),
    ("application/x-npy", NPY), ("Application/X-NPY", NPY), ("application/x-npy, */*;q=0.1", NPY),
    ("application/json;q=0.5, application/x-npy", NPY), ("application/x-npy;q=0.2, application/json", JSON),
    # A browser's Accept: no exact match, */* is enough for JSON.
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", JSON),
    # The most specific range sets a type's weight: JSON refused outright, x-npy allowed by */*.
    ("application/json;q=0, */*", NPY),
])
def test_accept_picks_the_answer_type(accept, chosen):
    assert negotiate(accept) == chosen


@pytest.mark.parametrize("accept", ["text/csv", "image/png, text/*", "application/json;q=0, application/x-npy;q=0",
                                    "*/*;q=0"])
def test_an_accept_that_allows_neither_is_a_406(accept):
    with pytest.raises(RequestError) as caught:
        negotiate(accept)
    assert caught.value.error_code.value == 406
    assert "application/x-npy" in str(caught.value)


def test_compact_rows_hold_class_confidence_and_probabilities():
    logits = np.random.default_rng(0).normal(size=(7, 10)).astype(np.float32)
    response = records_response(logits, "onnx-torch", "v1")
    assert response.media_type == NPY and response.headers["x-fashion-backend"] == "onnx-torch"
    records = np.load(io.BytesIO(response.body), allow_pickle=False)
    probs = softmax(logits)
    assert records.dtype == ANSWER_DTYPE and ANSWER_DTYPE.itemsize == 45
    assert np.array_equal(records["class_id"], probs.argmax(1))
    assert np.array_equal(records["confidence"], probs.max(1))
    assert np.array_equal(records["probabilities"], probs)
    assert np.array_equal(answer_records(probs), records)
