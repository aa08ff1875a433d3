"""The service as the onnx profile's Bento runs it (no torch, no TensorFlow): a real ``bentoml serve`` whose
processes cannot import either (a ``sitecustomize`` on ``PYTHONPATH`` puts ``None`` for both in ``sys.modules``:
``import`` fails, ``importlib.util.find_spec`` finds nothing). It loads the three ONNX backends, says so in
/model_info and /v2/models, refuses the others with a 4xx naming the loaded ones, and still answers calibrated
probabilities, the "not clothing" score and the v2 routes.

A real process rather than ``to_asgi()``: BentoML registers its metrics once per process, so a second in-process
service in the test session would collide with tests/integration/test_refusals_asgi.py's; and only a process
shows that the worker never imports either framework.
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import SAMPLE, start_server

ONNX_BACKENDS = ["onnx-torch", "onnx-tf", "onnx-int8"]
LOADED = "loaded: ['onnx-int8', 'onnx-tf', 'onnx-torch']"
WITHOUT_FRAMEWORKS = "import sys\nsys.modules.update(torch=None, tensorflow=None)\n"


@pytest.fixture(scope="module")
def client(exported, bentoml_home, tmp_path_factory):
    """An HTTP client on a server of the session's quick models without torch or TensorFlow."""
    from export.store import register_model

    for model_dir in exported.values():
        register_model(model_dir)
    site = tmp_path_factory.mktemp("without-frameworks")
    (site / "sitecustomize.py").write_text(WITHOUT_FRAMEWORKS)
    instance = start_server(bentoml_home, tmp_path_factory.mktemp("onnx-profile"), {"PYTHONPATH": str(site)})
    try:
        instance.wait_ready()
        with httpx.Client(base_url=instance.url, timeout=30) as http:
            yield http
    finally:
        instance.stop()


def sample_form() -> dict:
    return {"files": {"images": ("sample.png", SAMPLE, "image/png")}}


def test_model_info_names_the_loaded_backends_and_why_not_the_others(client):
    info = client.post("/model_info").json()
    assert info["ready"] and info["installed_backends"] == ONNX_BACKENDS
    assert list(info["backends"]) == ONNX_BACKENDS and all(b["loaded"] for b in info["backends"].values())
    assert info["not_installed"] == {"torch": "this environment has no torch",
                                     "savedmodel": "this environment has no tensorflow"}


def test_v2_models_lists_the_ready_models_and_the_unavailable_ones_with_why(client):
    models = client.get("/v2/models").json()["models"]
    assert [(m["name"], m["state"]) for m in models] == [(name, "READY") for name in ONNX_BACKENDS] + [
        ("torch", "UNAVAILABLE"), ("savedmodel", "UNAVAILABLE")]
    assert "this environment has no tensorflow" in models[-1]["reason"]


@pytest.mark.parametrize("backend", ["torch", "savedmodel"])
def test_asking_for_a_backend_the_profile_does_not_carry_is_a_4xx_naming_the_loaded_ones(client, backend):
    native = client.post("/classify", params={"backend": backend}, **sample_form())
    array = client.post("/classify_array", json={"pixels": [[[0] * 28] * 28], "backend": backend})
    v2 = [client.get(f"/v2/models/{backend}"), client.get(f"/v2/models/{backend}/ready"),
          client.post(f"/v2/models/{backend}/infer", json={"inputs": []})]
    for reply, status in [(native, 400), (array, 400)] + [(r, 404) for r in v2]:
        assert reply.status_code == status, reply.text
        body = reply.json()
        message = body[0]["error"] if isinstance(body, list) else body["error"]
        assert f"backend {backend!r} is not installed in this server" in message and LOADED in message


def test_calibration_and_the_not_clothing_score_work(client):
    (answer,) = client.post("/classify", **sample_form()).json()
    info = client.post("/model_info").json()["backends"]["onnx-torch"]
    assert answer["backend"] == "onnx-torch" and answer["label"]
    assert "ood_score" in answer and "in_distribution" in answer
    assert info["calibration_temperature"] > 0 and info["ood_threshold"] is not None


def test_v2_inference_works(client):
    reply = client.post("/v2/models/onnx-tf/infer", json={"inputs": [
        {"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}]})
    assert reply.status_code == 200, reply.text
    assert {o["name"] for o in reply.json()["outputs"]} >= {"logits", "probabilities"}
