"""The /parity endpoint in-process (tests.asgi): the comparison of tests/integration/test_parity.py over HTTP."""

from __future__ import annotations

import io

import numpy as np
import pytest


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_parity_endpoint(http, dataset):
    reply = http.post("/parity")
    assert reply.status_code == 200, reply.text
    report = reply.json()
    assert report["source"] == "samples" and report["images"] == 10 and report["consistent"] is True
    loaded = [name for name, facts in http.post("/model_info").json()["backends"].items() if facts["loaded"]]
    assert len(report["pairs"]) == len(loaded) * (len(loaded) - 1) // 2

    pixels = dataset.test_images[:1024]
    reply = http.post("/parity", content=npy(pixels), headers={"Content-Type": "application/x-npy"})
    assert reply.status_code == 200, reply.text
    report = reply.json()
    assert report["source"] == "request" and report["images"] == 1024 and report["consistent"] is True
    same = [p for p in report["pairs"] if p["relation"] == "same-model"]
    assert len(same) == 2 and all(p["top1_agreement"] == 1.0 for p in same)


@pytest.mark.parametrize(("request_args", "status"), [
    ({"json": {"pixels": [[1, 2, 3]]}}, 422),
    ({"json": {"pixels": np.zeros((1, 28, 28), int).tolist(), "backend": "torch"}}, 400),
    ({"content": b"{", "headers": {"Content-Type": "application/json"}}, 400),
])
def test_parity_endpoint_refuses_what_classify_array_refuses(http, request_args, status):
    reply = http.post("/parity", **request_args)
    assert reply.status_code == status, reply.text
    assert "error" in reply.json()[0]
