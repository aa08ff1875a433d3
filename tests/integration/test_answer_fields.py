"""Every route's answer carries calibrated probabilities and the "not clothing" fields (in-process, tests.asgi)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from fashion.contract import softmax
from fashion.imaging import encode_png


def uploads() -> list[tuple[str, tuple[str, bytes, str]]]:
    """A real sample garment and a blank image, as multipart files."""
    from fashion.samples import sample_paths

    garment = sample_paths()[0].read_bytes()
    return [("images", ("garment.png", garment, "image/png")),
            ("images", ("blank.png", encode_png(np.zeros((28, 28), np.uint8)), "image/png"))]


def check(answers: list[dict]) -> None:
    assert [a["in_distribution"] for a in answers] == [True, False]
    assert all(0.0 <= a["ood_score"] <= 1.0 for a in answers)


@pytest.mark.parametrize("route", ["/classify", "/classify_batch"])
@pytest.mark.parametrize("framing", ["dataset", "legacy"])
def test_upload_routes(http, route, framing):
    response = http.post(route, files=uploads(), data={"framing": framing})
    assert response.status_code == 200, response.text
    check(response.json())


def test_unknown_framing_is_a_400(http):
    response = http.post("/classify", files=uploads(), data={"framing": "crop"})
    assert response.status_code == 400 and "framing" in response.text


def test_pixel_route_and_calibrated_probabilities(http):
    from fashion.samples import sample_images

    pixels = np.stack([sample_images()[0][0], np.zeros((28, 28), np.uint8)])
    answers = http.post("/classify_array", json={"pixels": pixels.tolist()}).json()
    check(answers)
    info = http.get("/v2/models/onnx-torch").json()
    assert {o["name"] for o in info["outputs"]} >= {"ood_score", "in_distribution"}
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [2, 28, 28], "data": pixels.ravel().tolist()}]}
    result = http.post("/v2/models/onnx-torch/infer", json=body).json()
    outputs = {o["name"]: o for o in result["outputs"]}
    assert outputs["in_distribution"]["data"] == [True, False]
    logits = np.array(outputs["logits"]["data"], dtype=np.float32).reshape(2, 10)
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(2, 10)
    info = http.post("/model_info").json()
    temperature = info["backends"]["onnx-torch"]["calibration_temperature"]
    assert temperature != 1.0
    np.testing.assert_allclose(probabilities, softmax(logits, temperature), atol=1e-6)
    assert answers[0]["confidence"] == pytest.approx(float(probabilities[0].max()), abs=1e-6)


def test_dataset_task_result(http):
    from fashion.samples import sample_images

    pixels = np.stack([sample_images()[0][0], np.zeros((28, 28), np.uint8)])
    buffer = io.BytesIO()
    np.save(buffer, pixels)
    response = http.post("/classify_dataset", files={"images": ("x.npy", buffer.getvalue())})
    assert response.status_code == 200, response.text
    result = json.loads(response.text)
    assert result["in_distribution"] == [True, False] and len(result["ood_scores"]) == 2
