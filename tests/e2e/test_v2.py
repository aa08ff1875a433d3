"""The Open Inference Protocol (KServe v2) endpoints, driven by Triton's own v2 client and by raw HTTP."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from fashion.backends import BACKENDS
from fashion.contract import CLASS_NAMES, softmax, temperature_of
from fashion.manifest import read_manifest
from tests.helpers import (
    batch_histogram,
    held_batcher,
    queued_jobs,
    start_server,
    store_with,
    wait_until,
)

triton = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (dev extra) is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402 (after the skip above)

REPO = Path(__file__).resolve().parents[2]
HEADER_LENGTH = "Inference-Header-Content-Length"


def version_of(exported, backend: str) -> str:
    """The content version of the exported model a backend loads."""
    return read_manifest(exported["torch" if BACKENDS[backend].model.endswith("torch") else "tf"])["version"]


@pytest.fixture
def client(server):
    client = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def pixels(dataset):
    return dataset.test_images[200:264]


def native_labels(server, backend: str, pixels: np.ndarray) -> list[int]:
    reply = httpx.post(f"{server}/classify_array", json={"pixels": pixels.tolist(), "backend": backend}, timeout=300)
    assert reply.status_code == 200, reply.text
    return [answer["class_id"] for answer in reply.json()]


def images_input(pixels: np.ndarray, binary: bool):
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def test_health_and_server_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "fashion-serve" and metadata["version"]
    assert {"binary_tensor_data", "classification", "model_configuration"} <= set(metadata["extensions"])
    for path in ("/v2/health/live", "/v2/health/ready"):
        reply = httpx.get(server + path)
        assert reply.status_code == 200 and reply.content == b""  # the specification: status only
    # BentoML's own pages still answer beside the mounted app.
    assert "/classify" in httpx.get(f"{server}/docs.json").text
    assert httpx.get(f"{server}/").status_code == 200


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_model_metadata_and_readiness(server, client, exported, backend):
    version = version_of(exported, backend)
    assert client.is_model_ready(backend) and client.is_model_ready(backend, version)
    assert not client.is_model_ready(backend, "0" * 16)
    for metadata in (client.get_model_metadata(backend), client.get_model_metadata(backend, version)):
        assert metadata["name"] == backend and metadata["versions"] == [version]
        assert metadata["platform"] == {"onnx": "onnx_onnxv1", "savedmodel": "tensorflow_savedmodel",
                                        "torch": "pytorch_statedict"}[BACKENDS[backend].runtime]
        assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}]
        assert metadata["outputs"] == [*({"name": name, "datatype": "FP32", "shape": [-1, 10]}
                                         for name in ("logits", "probabilities")),
                                       {"name": "ood_score", "datatype": "FP32", "shape": [-1, 1]},
                                       {"name": "in_distribution", "datatype": "BOOL", "shape": [-1, 1]}]
    # What perf_analyzer reads: the batch limit, and dims without the batch dimension.
    config = client.get_model_config(backend, version)
    assert config["max_batch_size"] == 1024 and config["input"][0]["dims"] == [28, 28]
    assert [(o["name"], o["dims"]) for o in config["output"]] == [("logits", [10]), ("probabilities", [10]),
                                                                  ("ood_score", [1]), ("in_distribution", [1])]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_infer_gives_the_native_labels_as_json_and_binary(server, client, exported, pixels, backend):
    expected = native_labels(server, backend, pixels)
    version = version_of(exported, backend)
    results = {}
    for binary in (False, True):
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("logits", "probabilities")]
        result = client.infer(backend, [images_input(pixels, binary)], outputs=outputs, request_id=f"req-{binary}",
                              model_version=version if binary else "")
        answer = result.get_response()
        assert answer["id"] == f"req-{binary}" and answer["model_name"] == backend
        assert answer["model_version"] == version
        assert all(("data" in o) != binary for o in answer["outputs"])  # JSON or binary, as asked
        logits, probabilities = result.as_numpy("logits"), result.as_numpy("probabilities")
        assert logits.shape == probabilities.shape == (len(pixels), 10) and logits.dtype == np.float32
        assert logits.argmax(1).tolist() == expected
        manifest = read_manifest(exported["torch" if BACKENDS[backend].model.endswith("torch") else "tf"])
        np.testing.assert_allclose(probabilities, softmax(logits, temperature_of(manifest)), atol=1e-6)  # calibrated
        np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
        results[binary] = logits
    # JSON carries float32 exactly: both encodings give the same tensor.
    np.testing.assert_array_equal(results[False], results[True])


def test_outputs_as_requested(server, client, pixels):
    expected = native_labels(server, "onnx-torch", pixels)
    only = client.infer("onnx-torch", [images_input(pixels, True)],
                        outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["probabilities"]
    assert only.as_numpy("logits") is None and only.as_numpy("probabilities").argmax(1).tolist() == expected
    # tritonclient asks for every output in binary when it names none (parameters.binary_data_output).
    every = client.infer("onnx-torch", [images_input(pixels, True)])
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in every.get_response()["outputs"]}
    assert sizes == {"logits": len(pixels) * 40, "probabilities": len(pixels) * 40,
                     "ood_score": len(pixels) * 4, "in_distribution": len(pixels)}
    np.testing.assert_array_equal(every.as_numpy("probabilities"), only.as_numpy("probabilities"))
    # Triton's classification extension: "value:index:label", best first.
    for binary in (False, True):
        ranked = client.infer("onnx-torch", [images_input(pixels, binary)], outputs=[
            triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)]).as_numpy("probabilities")
        assert ranked.shape == (len(pixels), 3)
        top = [entry.decode() if isinstance(entry, bytes) else entry for entry in ranked[:, 0]]
        assert [int(t.split(":")[1]) for t in top] == expected
        assert [t.split(":", 2)[2] for t in top] == [CLASS_NAMES[c] for c in expected]
    # A compressed request body (tritonclient's request_compression_algorithm) is inflated.
    for algorithm in ("gzip", "deflate"):
        packed = client.infer("onnx-torch", [images_input(pixels, True)], request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(packed.as_numpy("logits"), every.as_numpy("logits"))


@pytest.mark.parametrize("nested", [False, True])
def test_raw_json_request_flat_or_nested_gets_every_output_as_json(server, pixels, nested):
    data = pixels.tolist() if nested else pixels.ravel().tolist()
    request = {"id": "42", "inputs": [{"name": "images", "shape": list(pixels.shape), "datatype": "UINT8",
                                       "data": data}]}
    reply = httpx.post(f"{server}/v2/models/onnx-tf/infer", json=request, timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json", reply.text
    answer = reply.json()
    assert answer["id"] == "42" and answer["model_name"] == "onnx-tf"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"logits", "probabilities", "ood_score", "in_distribution"}
    widths = {"logits": ("FP32", 10), "probabilities": ("FP32", 10), "ood_score": ("FP32", 1),
              "in_distribution": ("BOOL", 1)}
    for name, output in outputs.items():
        datatype, width = widths[name]
        assert output["datatype"] == datatype and output["shape"] == [len(pixels), width]
        assert len(output["data"]) == len(pixels) * width  # flat, row-major, as Triton answers
    labels = np.reshape(outputs["logits"]["data"], (-1, 10)).argmax(1).tolist()
    assert labels == native_labels(server, "onnx-tf", pixels)


def binary_request(pixels: np.ndarray, declared: int | None = None, extra: dict | None = None) -> dict:
    """httpx arguments for a binary-data request; ``declared`` overrides ``binary_data_size``."""
    header = json.dumps({"inputs": [{"name": "images", "shape": list(pixels.shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": declared or pixels.size}}],
                         **(extra or {})}).encode()
    return {"content": header + pixels.tobytes(), "headers": {HEADER_LENGTH: str(len(header))}}


def json_request(shape, datatype="UINT8", data=None, **fields) -> dict:
    data = data if data is not None else [0] * int(np.prod(shape))
    return {"json": {"inputs": [{"name": "images", "shape": shape, "datatype": datatype, "data": data}], **fields}}


ONE = np.zeros((1, 28, 28), np.uint8)
INFER = "/v2/models/onnx-torch/infer"
BAD_REQUESTS = {
    "wrong shape": (INFER, json_request([1, 784]), 400, "shape"),
    "data does not fill the shape": (INFER, json_request([2, 28, 28], data=[0] * 784), 400, "needs"),
    "ragged data": (INFER, json_request([2, 28, 28], data=[[0] * 784, [0]]), 400, "rectangular"),
    "wrong datatype": (INFER, json_request([1, 28, 28], "FP32", [0.5] * 784), 400, "UINT8"),
    "floats labelled UINT8": (INFER, json_request([1, 28, 28], data=[0.5] * 784), 400, "whole numbers"),
    "pixel over 255": (INFER, json_request([1, 28, 28], data=[256] * 784), 400, "0 to 255"),
    "no images": (INFER, json_request([0, 28, 28]), 400, "no images"),
    "too many images": (INFER, binary_request(np.zeros((1025, 28, 28), np.uint8)), 413, "at most"),
    "unknown input": (INFER, {"json": {"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [1]}]}},
                      400, "images"),
    "unknown output": (INFER, json_request([1, 28, 28], outputs=[{"name": "labels"}]), 400, "outputs"),
    "unknown field": (INFER, json_request([1, 28, 28], input=[]), 400, "unknown field"),
    "malformed json": (INFER, {"content": b'{"inputs": [', "headers": {"Content-Type": "application/json"}}, 400,
                       "JSON"),
    "deeply nested json": (INFER, {"content": b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}, 400,
                           "nested"),
    "empty body": (INFER, {"content": b""}, 400, "empty"),
    "binary size mismatch": (INFER, binary_request(ONE, declared=700), 400, "binary_data_size"),
    "short binary data": (INFER, {**binary_request(ONE), "content": binary_request(ONE)["content"][:-9]}, 400,
                          "binary data"),
    "header length past the body": (INFER, {**binary_request(ONE), "headers": {HEADER_LENGTH: "99999"}}, 400,
                                    HEADER_LENGTH),
    "header length not a number": (INFER, {**binary_request(ONE), "headers": {HEADER_LENGTH: b"\xb2"}}, 400,
                                   HEADER_LENGTH),
    "shared memory": (INFER, binary_request(ONE, extra={"outputs": [
        {"name": "logits", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 40}}]}), 400,
                      "shared memory"),
    "unsupported content encoding": (INFER, {**json_request([1, 28, 28]), "headers": {"Content-Encoding": "br"}}, 415,
                                     "Content-Encoding"),
    "gzip bomb": (INFER, {"content": gzip.compress(bytes(9 * 1024 * 1024)), "headers": {"Content-Encoding": "gzip"}},
                  413, "limit"),
    "unknown model": ("/v2/models/resnet50/infer", json_request([1, 28, 28]), 404, "unknown model"),
    "unknown version": ("/v2/models/onnx-torch/versions/0/infer", json_request([1, 28, 28]), 404, "version"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_the_specification_error(server, case):
    route, kwargs, status, words = BAD_REQUESTS[case]
    reply = httpx.post(server + route, timeout=60, **kwargs)
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]
    assert isinstance(message, str) and words in message
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/resnet50", "/v2/models/resnet50/ready",
                                  "/v2/models/onnx-torch/versions/0", "/v2/models/onnx-torch/versions/0/ready"])
def test_unknown_model_or_version_is_404(server, path):
    reply = httpx.get(server + path)
    assert reply.status_code == 404 and reply.json()["error"]


def test_tritonclient_raises_with_the_server_message(client):
    floats = triton.InferInput("images", [1, 28, 28], "FP32")
    floats.set_data_from_numpy(ONE.astype(np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("onnx-torch", [floats])
    assert caught.value.status() == "400" and "datatype UINT8" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("onnx-torch", "0")
    assert caught.value.status() == "404" and "no version '0'" in caught.value.message()


def test_v2_and_native_requests_share_the_batcher(server, client, pixels, batch_hold):
    calls_before, images_before = batch_histogram(server)
    client.infer("onnx-torch", [images_input(pixels, True)])
    calls, images = batch_histogram(server)
    assert (calls - calls_before, images - images_before) == (1, len(pixels))  # a v2 request is a batcher job

    def v2(i: int) -> int:  # raw HTTP: tritonclient's gevent connection pool is not for threads
        reply = httpx.post(server + INFER, timeout=300, **binary_request(pixels[i:i + 1], extra={
            "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}))
        assert reply.status_code == 200, reply.text
        return int(np.argmax(reply.json()["outputs"][0]["data"]))

    def native(i: int) -> int:
        return native_labels(server, "onnx-torch", pixels[i:i + 1])[0]

    expected = native_labels(server, "onnx-torch", pixels)
    calls, images = batch_histogram(server)
    pool = concurrent.futures.ThreadPoolExecutor(2 * len(pixels))
    try:
        # The batcher is held until all 128 one-image requests are queued: they then share one model call.
        with held_batcher(batch_hold):
            futures = [pool.submit(send, i) for i in range(len(pixels)) for send in (v2, native)]
            wait_until(lambda: queued_jobs(batch_hold) == len(futures), f"{len(futures)} requests queued", 120)
        labels = [f.result(timeout=300) for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert labels == [label for label in expected for _ in range(2)]
    calls_after, images_after = batch_histogram(server)
    assert (calls_after - calls, images_after - images) == (1, 2 * len(pixels))  # 128 images: one call of 256


def test_not_ready_server_is_live_and_says_not_ready(exported, tmp_path):
    home = store_with(exported, tmp_path, tamper="torch/model.onnx")
    instance = start_server(home, tmp_path)
    url = instance.url
    try:
        instance.wait_ready(path="/v2/health/live")
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        try:
            assert client.is_server_live() and not client.is_server_ready()
            assert not client.is_model_ready("onnx-torch")
            assert client.get_server_metadata()["name"] == "fashion-serve"
        finally:
            client.close()
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
        reply = httpx.post(f"{url}{INFER}", **binary_request(ONE))
        assert reply.status_code == 503 and reply.headers["retry-after"] and "not ready" in reply.json()["error"]
    finally:
        instance.stop()
