"""Compact answers in-process (tests.asgi): ``Accept: application/x-npy`` on the batch routes and dataset tasks."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest

from clients.client import FashionClient, npy_bytes
from fashion.backends import load_artifact
from fashion.contract import ANSWER_DTYPE, preprocess, softmax, temperature_of
from fashion.imaging import encode_png
from fashion.manifest import read_manifest
from tests.asgi import BASE_URL, transport_of
from tests.helpers import wait_until

NPY = "application/x-npy"


def offline_probs(exported, pixels):
    temperature = temperature_of(read_manifest(exported["torch"]))  # served probabilities are calibrated
    return softmax(load_artifact(exported["torch"], "onnx", "onnx", device="cpu").predict(preprocess(pixels)),
                   temperature)


def rows(reply: httpx.Response) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == NPY
    records = np.load(io.BytesIO(reply.content), allow_pickle=False)
    assert records.dtype == ANSWER_DTYPE
    return records


def test_classify_array_answers_rows_equal_to_its_json_answers(http, exported, dataset):
    pixels = dataset.test_images[:300]
    body = npy_bytes(pixels)
    compact = http.post("/classify_array", content=body,
                         headers={"Content-Type": NPY, "Accept": NPY})
    records = rows(compact)
    answers = http.post("/classify_array", content=body,
                         headers={"Content-Type": NPY}).json()
    assert records["class_id"].tolist() == [a["class_id"] for a in answers]
    assert np.allclose(records["confidence"], [a["confidence"] for a in answers], atol=1e-6)
    assert np.allclose(records["probabilities"], offline_probs(exported, pixels), atol=1e-5)
    assert compact.headers["x-fashion-backend"] == "onnx-torch"
    assert compact.headers["x-fashion-model-version"] == read_manifest(exported["torch"])["version"]
    assert len(compact.content) < len(answers.__repr__()) / 4  # what the format is for


def test_uploaded_files_can_be_answered_compactly(http, dataset):
    files = [("images", (f"{i}.png", encode_png(dataset.test_images[i]), "image/png")) for i in range(5)]
    for route in ("/classify", "/classify_batch"):
        records = rows(http.post(route, files=files, headers={"Accept": NPY}))
        json_answers = http.post(route, files=files).json()
        assert records["class_id"].tolist() == [a["class_id"] for a in json_answers]


@pytest.mark.parametrize(("accept", "status"), [("text/csv", 406), ("application/json;q=0, application/x-npy;q=0", 406),
                                                ("*/*", 200), ("text/html, */*;q=0.8", 200)])
def test_accept_is_honoured_or_refused_with_406(http, dataset, accept, status):
    reply = http.post("/classify_array", content=npy_bytes(dataset.test_images[:2]),
                       headers={"Content-Type": NPY, "Accept": accept})
    assert reply.status_code == status, reply.text
    if status == 406:
        assert "application/x-npy" in reply.json()["error"]
    else:
        assert reply.headers["content-type"].startswith("application/json")


def test_return_input_needs_json(http, dataset):
    reply = http.post("/classify", params={"return_input": "1"}, headers={"Accept": NPY},
                       files={"images": ("x.png", encode_png(dataset.test_images[0]), "image/png")})
    assert reply.status_code == 400 and "return_input" in reply.json()["error"]


def test_the_client_reads_compact_answers(http, dataset):
    with FashionClient(BASE_URL, transport=transport_of(http)) as client:
        answer = client.classify_array_records(dataset.test_images[:64])
        predictions = client.classify_array(dataset.test_images[:64])
    assert answer.records["class_id"].tolist() == [p.class_id for p in predictions]
    assert answer.backend == predictions[0].backend and answer.model_version == predictions[0].model_version


def wait_done(http, task_id: str) -> dict:
    return wait_until(lambda: (view := http.get("/classify_dataset/progress", params={"task_id": task_id}).json())
                      ["status"] != "in_progress" and view, f"task {task_id} to end", 120)


def test_a_task_submitted_with_accept_npy_gives_rows(http, exported, dataset):
    body = io.BytesIO()
    np.savez(body, images=dataset.test_images[:2000], labels=dataset.test_labels[:2000])
    reply = http.post("/classify_dataset/submit", content=body.getvalue(),
                       headers={"Content-Type": "application/octet-stream", "Accept": NPY})
    assert reply.status_code == 200, reply.text
    task_id = reply.json()["task_id"]
    assert wait_done(http, task_id)["status"] == "completed"
    result = http.get("/classify_dataset/get", params={"task_id": task_id})
    records = rows(result)
    probs = offline_probs(exported, dataset.test_images[:2000])
    assert np.array_equal(records["class_id"], probs.argmax(1))
    accuracy = float((probs.argmax(1) == dataset.test_labels[:2000]).mean())
    assert float(result.headers["x-fashion-accuracy"]) == pytest.approx(accuracy)
    assert result.headers["x-fashion-task-id"] == task_id


def test_a_task_asking_for_an_unknown_type_is_refused_at_submit(http, dataset):
    reply = http.post("/classify_dataset/submit", content=npy_bytes(dataset.test_images[:10]),
                       headers={"Content-Type": NPY, "Accept": "text/csv"})
    assert reply.status_code == 406 and "application/x-npy" in reply.json()["error"]
