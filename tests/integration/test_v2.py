"""The Open Inference Protocol (KServe v2) endpoints in-process (tests.asgi), with Triton's own v2 client
codec (``tritonclient.http``: request bodies, answers and errors as its client builds and reads them) and raw HTTP.

The not-ready server (a tampered model) is a process of its own: tests/e2e/test_service.py.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import zlib

import numpy as np
import pytest

from fashion.backends import BACKENDS
from fashion.contract import CLASS_NAMES, softmax, temperature_of
from fashion.manifest import read_manifest
from tests.asgi import batch_histogram
from tests.helpers import held_batcher, model_dir, queued_jobs, wait_until

triton = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (dev extra) is not installed")
from tritonclient.http._utils import _raise_if_error  # noqa: E402 (after the skip above)
from tritonclient.utils import InferenceServerException  # noqa: E402

HEADER_LENGTH = "Inference-Header-Content-Length"
COMPRESS = {"gzip": gzip.compress, "deflate": zlib.compress}  # as tritonclient's request_compression_algorithm


def version_of(exported, backend: str) -> str:
    """The content version of the exported model a backend loads."""
    return read_manifest(model_dir(exported, backend))["version"]


def model_path(model: str, version: str = "") -> str:
    """The model's path as tritonclient builds it (a version only when one is given)."""
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


def triton_infer(http, model: str, inputs, outputs=None, request_id: str = "", model_version: str = "",
                 request_compression_algorithm: str | None = None):
    """``InferenceServerClient.infer`` over the TestClient: tritonclient's request body, its error and its reader.

    Returns:
        the ``tritonclient.http.InferResult``.

    Raises:
        InferenceServerException: with the server's status and message, as tritonclient raises it.
    """
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs,
                                                                           request_id=request_id)
    headers = {} if json_size is None else {HEADER_LENGTH: str(json_size)}
    if request_compression_algorithm:
        body = COMPRESS[request_compression_algorithm](body)
        headers["Content-Encoding"] = request_compression_algorithm
    reply = http.post(model_path(model, model_version) + "/infer", content=body, headers=headers)
    _raise_if_error(reply)
    return triton.InferResult.from_response_body(reply.content, header_length=reply.headers.get(HEADER_LENGTH),
                                                 content_encoding=reply.headers.get("Content-Encoding"))


def triton_get(http, path: str) -> dict:
    """A metadata GET as tritonclient makes it: the JSON answer, or its InferenceServerException."""
    reply = http.get(path)
    _raise_if_error(reply)
    return reply.json()


def is_ready(http, path: str) -> bool:
    """tritonclient's ``is_*_ready``/``is_server_live``: the status alone says."""
    return http.get(path).status_code == 200


@pytest.fixture(scope="module")
def pixels(dataset):
    return dataset.test_images[200:264]


def native_labels(http, backend: str, pixels: np.ndarray) -> list[int]:
    reply = http.post("/classify_array", json={"pixels": pixels.tolist(), "backend": backend})
    assert reply.status_code == 200, reply.text
    return [answer["class_id"] for answer in reply.json()]


def images_input(pixels: np.ndarray, binary: bool):
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def test_health_and_server_metadata(http):
    assert is_ready(http, "/v2/health/live") and is_ready(http, "/v2/health/ready")
    metadata = triton_get(http, "/v2")
    assert metadata["name"] == "fashion-serve" and metadata["version"]
    assert {"binary_tensor_data", "classification", "model_configuration"} <= set(metadata["extensions"])
    for path in ("/v2/health/live", "/v2/health/ready"):
        reply = http.get(path)
        assert reply.status_code == 200 and reply.content == b""  # the specification: status only
    # BentoML's own pages still answer beside the mounted app.
    assert "/classify" in http.get("/docs.json").text
    assert http.get("/").status_code == 200


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_model_metadata_and_readiness(http, exported, backend):
    version = version_of(exported, backend)
    assert is_ready(http, model_path(backend) + "/ready") and is_ready(http, model_path(backend, version) + "/ready")
    assert not is_ready(http, model_path(backend, "0" * 16) + "/ready")
    for metadata in (triton_get(http, model_path(backend)), triton_get(http, model_path(backend, version))):
        assert metadata["name"] == backend and metadata["versions"] == [version]
        assert metadata["platform"] == {"onnx": "onnx_onnxv1", "savedmodel": "tensorflow_savedmodel",
                                        "torch": "pytorch_statedict"}[BACKENDS[backend].runtime]
        assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}]
        assert metadata["outputs"] == [*({"name": name, "datatype": "FP32", "shape": [-1, 10]}
                                         for name in ("logits", "probabilities")),
                                       {"name": "ood_score", "datatype": "FP32", "shape": [-1, 1]},
                                       {"name": "in_distribution", "datatype": "BOOL", "shape": [-1, 1]}]
    # What perf_analyzer reads: the batch limit, and dims without the batch dimension.
    config = triton_get(http, model_path(backend, version) + "/config")
    assert config["max_batch_size"] == 1024 and config["input"][0]["dims"] == [28, 28]
    assert [(o["name"], o["dims"]) for o in config["output"]] == [("logits", [10]), ("probabilities", [10]),
                                                                  ("ood_score", [1]), ("in_distribution", [1])]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_infer_gives_the_native_labels_as_json_and_binary(http, exported, pixels, backend):
    expected = native_labels(http, backend, pixels)
    version = version_of(exported, backend)
    results = {}
    for binary in (False, True):
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("logits", "probabilities")]
        result = triton_infer(http, backend, [images_input(pixels, binary)], outputs=outputs,
                              request_id=f"req-{binary}", model_version=version if binary else "")
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


def test_outputs_as_requested(http, pixels):
    expected = native_labels(http, "onnx-torch", pixels)
    only = triton_infer(http, "onnx-torch", [images_input(pixels, True)],
                        outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["probabilities"]
    assert only.as_numpy("logits") is None and only.as_numpy("probabilities").argmax(1).tolist() == expected
    # tritonclient asks for every output in binary when it names none (parameters.binary_data_output).
    every = triton_infer(http, "onnx-torch", [images_input(pixels, True)])
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in every.get_response()["outputs"]}
    assert sizes == {"logits": len(pixels) * 40, "probabilities": len(pixels) * 40,
                     "ood_score": len(pixels) * 4, "in_distribution": len(pixels)}
    np.testing.assert_array_equal(every.as_numpy("probabilities"), only.as_numpy("probabilities"))
    # Triton's classification extension: "value:index:label", best first.
    for binary in (False, True):
        ranked = triton_infer(http, "onnx-torch", [images_input(pixels, binary)], outputs=[
            triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)]).as_numpy("probabilities")
        assert ranked.shape == (len(pixels), 3)
        top = [entry.decode() if isinstance(entry, bytes) else entry for entry in ranked[:, 0]]
        assert [int(t.split(":")[1]) for t in top] == expected
        assert [t.split(":", 2)[2] for t in top] == [CLASS_NAMES[c] for c in expected]
    # A compressed request body (tritonclient's request_compression_algorithm) is inflated.
    for algorithm in ("gzip", "deflate"):
        packed = triton_infer(http, "onnx-torch", [images_input(pixels, True)],
                              request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(packed.as_numpy("logits"), every.as_numpy("logits"))


@pytest.mark.parametrize("nested", [False, True])
def test_raw_json_request_flat_or_nested_gets_every_output_as_json(http, pixels, nested):
    data = pixels.tolist() if nested else pixels.ravel().tolist()
    request = {"id": "42", "inputs": [{"name": "images", "shape": list(pixels.shape), "datatype": "UINT8",
                                       "data": data}]}
    reply = http.post("/v2/models/onnx-tf/infer", json=request)
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
    assert labels == native_labels(http, "onnx-tf", pixels)


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
def test_bad_request_gets_the_specification_error(http, case):
    route, kwargs, status, words = BAD_REQUESTS[case]
    reply = http.post(route, **kwargs)
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]
    assert isinstance(message, str) and words in message
    assert http.get("/v2/health/ready").status_code == 200


def test_a_repeated_header_is_read_by_its_first_value(http):
    """As Starlette reads headers (the inference endpoint reads the ASGI scope itself, service.v2.first_values)."""
    request = binary_request(ONE)
    good = request["headers"][HEADER_LENGTH]
    assert http.post(INFER, content=request["content"], headers=[(HEADER_LENGTH, good), (HEADER_LENGTH, "99999")]
                     ).status_code == 200
    assert http.post(INFER, content=request["content"], headers=[(HEADER_LENGTH, "99999"), (HEADER_LENGTH, good)]
                     ).status_code == 400


@pytest.mark.parametrize("path", ["/v2/models/resnet50", "/v2/models/resnet50/ready",
                                  "/v2/models/onnx-torch/versions/0", "/v2/models/onnx-torch/versions/0/ready"])
def test_unknown_model_or_version_is_404(http, path):
    reply = http.get(path)
    assert reply.status_code == 404 and reply.json()["error"]


def test_tritonclient_raises_with_the_server_message(http):
    floats = triton.InferInput("images", [1, 28, 28], "FP32")
    floats.set_data_from_numpy(ONE.astype(np.float32))
    with pytest.raises(InferenceServerException) as caught:
        triton_infer(http, "onnx-torch", [floats])
    assert caught.value.status() == "400" and "datatype UINT8" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        triton_get(http, model_path("onnx-torch", "0"))
    assert caught.value.status() == "404" and "no loaded version '0'" in caught.value.message()


def test_v2_and_native_requests_share_the_batcher(http, pixels, batch_gate):
    calls_before, images_before = batch_histogram(http)
    triton_infer(http, "onnx-torch", [images_input(pixels, True)])
    calls, images = batch_histogram(http)
    assert (calls - calls_before, images - images_before) == (1, len(pixels))  # a v2 request is a batcher job

    def v2(i: int) -> int:  # raw HTTP, from a thread each: the TestClient runs them all on the app's loop
        reply = http.post(INFER, **binary_request(pixels[i:i + 1], extra={
            "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}))
        assert reply.status_code == 200, reply.text
        return int(np.argmax(reply.json()["outputs"][0]["data"]))

    def native(i: int) -> int:
        return native_labels(http, "onnx-torch", pixels[i:i + 1])[0]

    expected = native_labels(http, "onnx-torch", pixels)
    calls, images = batch_histogram(http)
    pool = concurrent.futures.ThreadPoolExecutor(2 * len(pixels))
    try:
        # The batcher is held until all 128 one-image requests are queued: they then share one model call.
        with held_batcher(batch_gate):
            futures = [pool.submit(send, i) for i in range(len(pixels)) for send in (v2, native)]
            wait_until(lambda: queued_jobs(batch_gate) == len(futures), f"{len(futures)} requests queued", 120)
        labels = [f.result(timeout=300) for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert labels == [label for label in expected for _ in range(2)]
    calls_after, images_after = batch_histogram(http)
    assert (calls_after - calls, images_after - images) == (1, 2 * len(pixels))  # 128 images: one call of 256

