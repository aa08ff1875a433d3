"""The BentoML service in-process (tests.asgi): answers against the offline models, batching, /model_info. What
only a process shows (readiness with a tampered model, the Bento, the real server's refusals) is in
tests/e2e/test_service.py."""

from __future__ import annotations

import concurrent.futures
import io

import numpy as np
import pytest

from fashion.backends import BACKENDS, load_artifact
from fashion.contract import preprocess
from fashion.imaging import encode_png
from fashion.manifest import read_manifest
from fashion.samples import sample_images, sample_paths
from tests.asgi import batch_histogram
from tests.helpers import held_batcher, model_dir, queued_jobs, wait_until


def offline_labels(exported, backend: str, pixels: np.ndarray) -> list[int]:
    spec = BACKENDS[backend]
    predictor = load_artifact(model_dir(exported, backend), spec.artifact, spec.runtime, device="cpu")
    return predictor.predict(preprocess(pixels)).argmax(1).tolist()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_one_real_image_per_class_matches_the_offline_model(http, exported, backend):
    pixels, _ = sample_images()
    expected = offline_labels(exported, backend, pixels)
    for path, want in zip(sample_paths(), expected, strict=True):
        reply = http.post("/classify", params={"backend": backend},
                           files={"images": (path.name, path.read_bytes(), "image/png")})
        assert reply.status_code == 200, reply.text
        [answer] = reply.json()
        assert answer["class_id"] == want and answer["backend"] == backend
        assert answer["label"] and 0 < answer["confidence"] <= 1 and len(answer["top_k"]) == 3
        assert answer["model_version"] == read_manifest(exported["torch" if "torch" in BACKENDS[backend].model
                                                                else "tf"])["version"]


def test_raw_image_body_uses_the_default_backend(http):
    path = sample_paths()[7]
    reply = http.post("/classify", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert reply.status_code == 200 and reply.json()[0]["backend"] == "onnx-torch"


def test_batch_answers_keep_input_order(http, exported, dataset):
    pixels = dataset.test_images[100:164]
    expected = offline_labels(exported, "onnx-tf", pixels)
    files = [("images", (f"{i}.png", encode_png(p), "image/png")) for i, p in enumerate(pixels)]
    reply = http.post("/classify_batch", files=files, data={"backend": "onnx-tf"})
    assert reply.status_code == 200, reply.text
    assert [a["class_id"] for a in reply.json()] == expected
    reply = http.post("/classify_array", json={"pixels": pixels.tolist(), "backend": "onnx-tf"})
    assert [a["class_id"] for a in reply.json()] == expected
    buffer = io.BytesIO()
    np.save(buffer, pixels)
    reply = http.post("/classify_array", params={"backend": "onnx-tf"}, content=buffer.getvalue(),
                       headers={"Content-Type": "application/x-npy"})
    assert [a["class_id"] for a in reply.json()] == expected


def test_a_burst_of_single_images_is_merged_into_one_model_call_and_answered_correctly(http, exported, dataset,
                                                                                        batch_gate):
    pixels = dataset.test_images[:32]
    expected = offline_labels(exported, "onnx-torch", pixels)

    def send(i: int) -> int:
        reply = http.post("/classify", files={"images": ("x.png", encode_png(pixels[i]), "image/png")})
        assert reply.status_code == 200, reply.text
        return reply.json()[0]["class_id"]

    calls, images = batch_histogram(http)
    pool = concurrent.futures.ThreadPoolExecutor(len(pixels))
    try:
        # The batcher is held until the whole burst is queued: then it runs as one call, on any machine.
        with held_batcher(batch_gate):
            futures = [pool.submit(send, i) for i in range(len(pixels))]
            wait_until(lambda: queued_jobs(batch_gate) == len(pixels), f"{len(pixels)} requests queued", 120)
        assert [future.result(timeout=300) for future in futures] == expected
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    calls_after, images_after = batch_histogram(http)
    assert (calls_after - calls, images_after - images) == (1, len(pixels))


def test_model_info_tells_what_runs_where(http, exported):
    info = http.post("/model_info").json()
    assert info["ready"] is True and info["default_backend"] == "onnx-torch" and info["error"] is None
    assert set(info["backends"]) == set(BACKENDS)
    for name, facts in info["backends"].items():
        spec = BACKENDS[name]
        manifest = read_manifest(exported["torch" if spec.model.endswith("torch") else "tf"])
        assert facts["loaded"] is True and facts["model_version"] == manifest["version"]
        assert facts["sha256"] == manifest["artifacts"][spec.artifact]["sha256"]
        assert facts["test_accuracy"] == manifest["artifacts"][spec.artifact]["test_accuracy"]
        assert facts["device"].lower().startswith("cpu")  # no GPU on the CI machine
        if spec.runtime == "onnx":
            assert facts["providers"] == ["CPUExecutionProvider"]
    assert http.get("/livez").status_code == 200
    assert "bentoml_service_request" in http.get("/metrics").text
    assert "/classify" in http.get("/docs.json").text
