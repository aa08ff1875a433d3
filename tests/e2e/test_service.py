"""The BentoML service, end to end against a real ``bentoml serve`` process."""

from __future__ import annotations

import concurrent.futures
import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from fashion.backends import BACKENDS, load_artifact
from fashion.contract import preprocess
from fashion.imaging import encode_png
from fashion.manifest import read_manifest
from fashion.samples import sample_images, sample_paths
from tests.helpers import (
    BAD_INPUTS,
    SAMPLE,
    batch_histogram,
    held_batcher,
    queued_jobs,
    start_server,
    store_with,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]


def offline_labels(exported, backend: str, pixels: np.ndarray) -> list[int]:
    spec = BACKENDS[backend]
    model_dir = exported["torch" if spec.model.endswith("torch") else "tf"]
    predictor = load_artifact(model_dir, spec.artifact, spec.runtime, device="cpu")
    return predictor.predict(preprocess(pixels)).argmax(1).tolist()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_one_real_image_per_class_matches_the_offline_model(server, exported, backend):
    pixels, _ = sample_images()
    expected = offline_labels(exported, backend, pixels)
    for path, want in zip(sample_paths(), expected, strict=True):
        reply = httpx.post(f"{server}/classify", params={"backend": backend},
                           files={"images": (path.name, path.read_bytes(), "image/png")}, timeout=30)
        assert reply.status_code == 200, reply.text
        [answer] = reply.json()
        assert answer["class_id"] == want and answer["backend"] == backend
        assert answer["label"] and 0 < answer["confidence"] <= 1 and len(answer["top_k"]) == 3
        assert answer["model_version"] == read_manifest(exported["torch" if "torch" in BACKENDS[backend].model
                                                                else "tf"])["version"]


def test_raw_image_body_uses_the_default_backend(server):
    path = sample_paths()[7]
    reply = httpx.post(f"{server}/classify", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert reply.status_code == 200 and reply.json()[0]["backend"] == "onnx-torch"


def test_batch_answers_keep_input_order(server, exported, dataset):
    pixels = dataset.test_images[100:164]
    expected = offline_labels(exported, "onnx-tf", pixels)
    files = [("images", (f"{i}.png", encode_png(p), "image/png")) for i, p in enumerate(pixels)]
    reply = httpx.post(f"{server}/classify_batch", files=files, data={"backend": "onnx-tf"}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert [a["class_id"] for a in reply.json()] == expected
    reply = httpx.post(f"{server}/classify_array", json={"pixels": pixels.tolist(), "backend": "onnx-tf"})
    assert [a["class_id"] for a in reply.json()] == expected
    buffer = io.BytesIO()
    np.save(buffer, pixels)
    reply = httpx.post(f"{server}/classify_array", params={"backend": "onnx-tf"}, content=buffer.getvalue(),
                       headers={"Content-Type": "application/x-npy"})
    assert [a["class_id"] for a in reply.json()] == expected


def test_a_burst_of_single_images_is_merged_into_one_model_call_and_answered_correctly(server, exported, dataset,
                                                                                        batch_hold):
    pixels = dataset.test_images[:32]
    expected = offline_labels(exported, "onnx-torch", pixels)

    def send(i: int) -> int:
        reply = httpx.post(f"{server}/classify", files={"images": ("x.png", encode_png(pixels[i]), "image/png")},
                           timeout=300)
        assert reply.status_code == 200, reply.text
        return reply.json()[0]["class_id"]

    calls, images = batch_histogram(server)
    pool = concurrent.futures.ThreadPoolExecutor(len(pixels))
    try:
        # The batcher is held until the whole burst is queued: then it runs as one call, on any machine.
        with held_batcher(batch_hold):
            futures = [pool.submit(send, i) for i in range(len(pixels))]
            wait_until(lambda: queued_jobs(batch_hold) == len(pixels), f"{len(pixels)} requests queued", 120)
        assert [future.result(timeout=300) for future in futures] == expected
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    calls_after, images_after = batch_histogram(server)
    assert (calls_after - calls, images_after - images) == (1, len(pixels))


def test_model_info_tells_what_runs_where(server, exported):
    info = httpx.post(f"{server}/model_info").json()
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
    assert httpx.get(f"{server}/livez").status_code == 200
    assert "bentoml_service_request" in httpx.get(f"{server}/metrics").text
    assert "/classify" in httpx.get(f"{server}/docs.json").text


# Every case runs in-process (tests/integration/test_refusals_asgi.py); these go through the real server too.
@pytest.mark.parametrize("case", ["oversize body", "too many images", "pickle content type", "url instead of a file"])
def test_bad_input_gets_a_documented_4xx_and_the_server_stays_ready(server, case):
    route, kwargs, status = BAD_INPUTS[case]
    reply = httpx.post(server + route, timeout=30, **kwargs)
    assert reply.status_code == status, reply.text
    body = reply.json()
    message = body[0]["error"] if isinstance(body, list) else body["error"]
    assert isinstance(message, str) and message
    assert httpx.get(f"{server}/readyz").status_code == 200


def test_not_ready_until_models_load_and_never_with_a_tampered_model(exported, tmp_path):
    home = store_with(exported, tmp_path, tamper="tf/model.onnx")
    instance = start_server(home, tmp_path)
    url = instance.url
    try:
        instance.wait_ready(path="/livez")
        assert httpx.get(f"{url}/readyz").status_code == 503
        info = wait_until(lambda: (answer := httpx.post(f"{url}/model_info").json())["error"] and answer,
                          "/model_info to report the loading error", 300, interval=0.25)
        assert "model.onnx" in info["error"] and "SHA-256" in info["error"]
        assert httpx.get(f"{url}/readyz").status_code == 503
        with pytest.raises(RuntimeError, match=r"models failed to load.*SHA-256"):
            instance.wait_ready(timeout=60)  # says why at once instead of waiting out the timeout
        reply = httpx.post(f"{url}/classify", files={"images": ("a.png", SAMPLE, "image/png")})
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
        assert "not ready" in reply.json()["error"] and "SHA-256" in reply.json()["error"]
    finally:
        instance.stop()


def test_bentoml_build_packages_the_service(server, bentoml_home, tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "build", str(REPO), "--output", "tag"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    import bentoml

    bento = bentoml.get(tag)
    files = {str(p.relative_to(bento.path)) for p in Path(bento.path).rglob("*") if p.is_file()}
    assert "src/service/service.py" in files and not any(f.startswith("src/training") for f in files)
    [service] = bento.info.services
    assert {m.tag.name for m in service.models} == {"fashion-mlp-torch", "fashion-mlp-tf"}
    assert service.config["logging"]["access"]["enabled"] is False


def test_a_backend_not_loaded_is_refused_without_failing_other_requests(exported, tmp_path):
    home = store_with(exported, tmp_path)
    instance = start_server(home, tmp_path, {"FASHION_BACKENDS": "onnx-torch"})
    url = instance.url
    try:
        instance.wait_ready()
        files = {"images": ("a.png", SAMPLE, "image/png")}

        def send(backend: str) -> int:
            return httpx.post(f"{url}/classify", params={"backend": backend}, files=files, timeout=30).status_code

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(send, ["torch", "onnx-torch"] * 40))
        assert statuses == [400, 200] * 40
        info = httpx.post(f"{url}/model_info").json()
        assert info["backends"]["onnx-torch"]["loaded"] and list(info["backends"]) == ["onnx-torch"]
    finally:
        instance.stop()
