"""The Open Inference Protocol over gRPC (service.grpc_server), served in process over the quickly trained models.

tritonclient's gRPC client asks from a process of its own (tests/triton_grpc_probe.py says why); every other call
uses the server's own stubs (service/protocol) from this process.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fashion.contract import softmax
from fashion.manifest import read_manifest
from service.auth import new_key
from service.config import ServiceConfig
from service.protocol import open_inference_pb2 as pb
from service.protocol import open_inference_pb2_grpc as pb_grpc
from service.registry import ModelRegistry
from tests.grpc_harness import GrpcServerThread, build_serving, load_registry

REPO = Path(__file__).resolve().parents[2]
MODEL = "onnx-torch"
CONFIG = ServiceConfig(backends=(MODEL,), default_backend=MODEL, device="cpu", threads=1, max_images=128,
                       max_in_flight=8)
# Below 100 raw images (78,400 bytes) and above 64 (50,176): the message limit, not the image limit, refuses 100.
MESSAGE_LIMIT = 64 * 1024
CALL_TIMEOUT_S = 60  # a hang guard: each call here answers in milliseconds


@pytest.fixture(scope="module")
def registry(exported) -> ModelRegistry:
    return load_registry(CONFIG, {read_manifest(exported["torch"])["name"]: exported["torch"]})


@pytest.fixture(scope="module")
def server(registry):
    instance = GrpcServerThread(build_serving(CONFIG, registry), max_message_bytes=MESSAGE_LIMIT)
    yield instance
    instance.stop()


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server.target) as opened:
        yield opened


@pytest.fixture
def stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


def infer_request(images: np.ndarray, model: str = MODEL, typed: bool = False, **fields) -> pb.ModelInferRequest:
    """A request for ``images`` (raw bytes unless ``typed``), with any other fields given."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=list(images.shape))
    if typed:
        tensor.contents.uint_contents.extend(images.ravel().tolist())
    else:
        request.raw_input_contents.append(images.tobytes())
    return request


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, grpc.RpcError | None]:
    """The status a call ends with, and its error (``None`` when OK)."""
    try:
        call(*args, timeout=kwargs.pop("timeout", CALL_TIMEOUT_S), **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc
    return grpc.StatusCode.OK, None


def test_tritonclient_drives_every_call(server, registry, dataset, tmp_path):
    images = dataset.test_images[:5]
    np.save(tmp_path / "images.npy", images)
    run = subprocess.run([sys.executable, "-m", "tests.triton_grpc_probe", "--url", server.target, "--model", MODEL,
                          "--images", str(tmp_path / "images.npy")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["server_metadata"]["name"] == "fashion-serve"
    backend = registry.get(MODEL)
    assert seen["model_metadata"]["versions"] == [backend.manifest["version"]]
    assert seen["model_metadata"]["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": ["-1", "28", "28"]}]
    config = seen["model_config"]["config"]
    assert config["max_batch_size"] == CONFIG.max_images
    assert config["input"] == [{"name": "images", "data_type": "TYPE_UINT8", "dims": ["28", "28"]}]
    assert [o["name"] for o in config["output"]] == ["logits", "probabilities", "ood_score", "in_distribution"]

    expected = registry.run_batch(MODEL, images, True)
    probabilities = softmax(expected.logits, backend.temperature)
    for answer in (seen["binary"], seen["typed"]):
        assert answer["id"] == "probe"
        np.testing.assert_allclose(answer["logits"], expected.logits, atol=1e-5)
        np.testing.assert_allclose(answer["probabilities"], probabilities, atol=1e-6)
        np.testing.assert_allclose(answer["ood_score"], expected.scores[:, None], atol=1e-6)
        assert answer["in_distribution"] == backend.detector.in_distribution(expected.scores[:, None]).tolist()
    best = [row[0].split(":") for row in seen["classification"]]
    assert [int(index) for _, index, _ in best] == probabilities.argmax(axis=1).tolist()
    [stats] = seen["statistics"]["model_stats"]  # Triton's integer name for the version (service.stats)
    assert (stats["name"], stats["version"]) == (MODEL, str(int(backend.version[:15], 16)))
    timings = stats["inference_stats"]
    assert int(timings["success"]["count"]) >= 3 and int(stats["inference_count"]) >= 3 * len(images)
    assert timings["queue"]["count"] == timings["compute_infer"]["count"] == timings["success"]["count"]
    assert int(timings["compute_infer"]["ns"]) > 0


def test_statistics_of_an_unknown_model_or_version_are_not_found(stub):
    assert code_of(stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope"))[0] == grpc.StatusCode.NOT_FOUND
    request = pb.ModelStatisticsRequest(name=MODEL, version="123")
    assert code_of(stub.ModelStatistics, request)[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(stub.ModelStatistics, pb.ModelStatisticsRequest())[0] == grpc.StatusCode.OK


def test_health_checking_says_serving_and_refuses_unknown_services(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    code, _ = code_of(health.Check, health_pb2.HealthCheckRequest(service="nope"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_outputs_come_raw_and_only_those_asked_for(stub, registry, dataset):
    images = dataset.test_images[:3]
    request = infer_request(images, id="r1", outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")])
    answer = stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    assert answer.id == "r1" and [o.name for o in answer.outputs] == ["logits"]
    assert answer.outputs[0].datatype == "FP32" and list(answer.outputs[0].shape) == [3, 10]
    logits = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(3, 10)
    np.testing.assert_allclose(logits, registry.run_batch(MODEL, images).logits, atol=1e-5)


def output(name: str, **params) -> pb.ModelInferRequest.InferRequestedOutputTensor:
    tensor = pb.ModelInferRequest.InferRequestedOutputTensor(name=name)
    for key, value in params.items():
        tensor.parameters[key].CopyFrom(value)
    return tensor


def mixed() -> pb.ModelInferRequest:
    request = infer_request(np.zeros((1, 28, 28), np.uint8))
    request.inputs[0].contents.uint_contents.extend([0] * 784)
    return request


def with_raw(images: np.ndarray, raw: list[bytes]) -> pb.ModelInferRequest:
    request = infer_request(images)
    del request.raw_input_contents[:]
    request.raw_input_contents.extend(raw)
    return request


def retyped(request: pb.ModelInferRequest, **fields) -> pb.ModelInferRequest:
    for key, value in fields.items():
        if key == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)
        else:
            setattr(request.inputs[0], key, value)
    return request


ONE = np.zeros((1, 28, 28), np.uint8)
# Each malformed call and the status the protocol gives it.
REFUSED = {
    "unknown model": (lambda: infer_request(ONE, model="resnet"), "NOT_FOUND"),
    "one of ours not served here": (lambda: infer_request(ONE, model="onnx-tf"), "NOT_FOUND"),
    "unknown version": (lambda: infer_request(ONE, model_version="nope"), "NOT_FOUND"),
    "no input": (lambda: pb.ModelInferRequest(model_name=MODEL), "INVALID_ARGUMENT"),
    "wrong input name": (lambda: retyped(infer_request(ONE), name="pixels"), "INVALID_ARGUMENT"),
    "wrong datatype": (lambda: retyped(infer_request(ONE), datatype="FP32"), "INVALID_ARGUMENT"),
    "wrong shape": (lambda: retyped(infer_request(ONE), shape=[1, 784]), "INVALID_ARGUMENT"),
    "no images": (lambda: retyped(infer_request(ONE), shape=[0, 28, 28]), "INVALID_ARGUMENT"),
    "over the image limit": (lambda: retyped(infer_request(ONE), shape=[129, 28, 28]), "INVALID_ARGUMENT"),
    "raw size differs from the shape": (lambda: with_raw(ONE, [bytes(783)]), "INVALID_ARGUMENT"),
    "two raw tensors for one input": (lambda: with_raw(ONE, [bytes(784), bytes(784)]), "INVALID_ARGUMENT"),
    "raw and typed mixed": (mixed, "INVALID_ARGUMENT"),
    "neither raw nor typed": (lambda: with_raw(ONE, []), "INVALID_ARGUMENT"),
    "typed values over 255": (lambda: pb.ModelInferRequest(
        model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="UINT8", shape=[1, 28, 28],
            contents=pb.InferTensorContents(uint_contents=[256] * 784))]), "INVALID_ARGUMENT"),
    "typed in the wrong field": (lambda: pb.ModelInferRequest(
        model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="UINT8", shape=[1, 28, 28],
            contents=pb.InferTensorContents(fp32_contents=[0.0] * 784))]), "INVALID_ARGUMENT"),
    "unknown output": (lambda: infer_request(ONE, outputs=[output("boxes")]), "INVALID_ARGUMENT"),
    "an output twice": (lambda: infer_request(ONE, outputs=[output("logits"), output("logits")]), "INVALID_ARGUMENT"),
    "classification out of range": (lambda: infer_request(
        ONE, outputs=[output("logits", classification=pb.InferParameter(int64_param=11))]), "INVALID_ARGUMENT"),
    "classification of a score": (lambda: infer_request(
        ONE, outputs=[output("ood_score", classification=pb.InferParameter(int64_param=1))]), "INVALID_ARGUMENT"),
    "shared memory": (lambda: infer_request(
        ONE, parameters={"shared_memory_region": pb.InferParameter(string_param="r")}), "INVALID_ARGUMENT"),
    "over the message limit": (lambda: infer_request(np.zeros((100, 28, 28), np.uint8)), "RESOURCE_EXHAUSTED"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_each_malformed_request_gets_its_status(stub, case):
    make, expected = REFUSED[case]
    code, error = code_of(stub.ModelInfer, make())
    assert code == grpc.StatusCode[expected], error and error.details()


def calls_counted(method: str, code: str) -> float:
    """The gRPC calls counted for Prometheus with ``method`` and ``code`` (service.grpc_server.metrics)."""
    from service.grpc_server import metrics

    (family,) = metrics()["calls"].collect()
    return sum(sample.value for sample in family.samples
               if sample.name.endswith("_total") and sample.labels == {"method": method, "code": code})


def test_calls_are_counted_by_method_and_status(stub):
    before = {code: calls_counted("ModelInfer", code) for code in ("OK", "NOT_FOUND")}
    stub.ModelInfer(infer_request(ONE), timeout=CALL_TIMEOUT_S)
    code_of(stub.ModelInfer, infer_request(ONE, model="resnet"))
    assert {code: calls_counted("ModelInfer", code) - before[code] for code in before} == {"OK": 1, "NOT_FOUND": 1}


def test_metadata_and_config_of_an_unknown_model_are_not_found(stub):
    for call, message in ((stub.ModelMetadata, pb.ModelMetadataRequest), (stub.ModelConfig, pb.ModelConfigRequest)):
        assert code_of(call, message(name="resnet"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(stub.ModelReady, pb.ModelReadyRequest(name=MODEL, version="nope"))[0] == grpc.StatusCode.NOT_FOUND


def test_bytes_that_are_no_message_are_invalid_argument(channel):
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    code, error = code_of(raw, b"\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid ModelInferRequest" in error.details()


def test_the_in_flight_limit_is_shared_with_rest_and_says_when_to_retry(server, stub):
    in_flight = server.serving.in_flight
    for _ in range(CONFIG.max_in_flight):  # REST requests in progress count against the same limit
        in_flight.enter(("rest-client", 1))
    try:
        code, error = code_of(stub.ModelInfer, infer_request(ONE))
    finally:
        for _ in range(CONFIG.max_in_flight):
            in_flight.leave()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.trailing_metadata())
    assert trailers["retry-after"] == "1" and trailers["grpc-retry-pushback-ms"] == "1000"
    assert code_of(stub.ModelInfer, infer_request(ONE))[0] == grpc.StatusCode.OK


def test_while_loading_inference_is_unavailable_and_probes_say_not_ready():
    loading = GrpcServerThread(build_serving(CONFIG, ModelRegistry(CONFIG)))
    try:
        with grpc.insecure_channel(loading.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            code, error = code_of(stub.ModelInfer, infer_request(ONE))
            assert code == grpc.StatusCode.UNAVAILABLE and dict(error.trailing_metadata())["retry-after"] == "1"
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live
            assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
            assert not stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=CALL_TIMEOUT_S).ready
            health = health_pb2_grpc.HealthStub(channel)
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        loading.stop()


def test_deadlines_the_clients_and_the_services_own(registry, tmp_path):
    hold = tmp_path / "hold"
    config = dataclasses.replace(CONFIG, batch_hold_file=str(hold))
    held = GrpcServerThread(build_serving(config, registry), timeout_s=0.5)
    hold.touch()  # no model call starts: every inference waits
    try:
        with grpc.insecure_channel(held.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            code, _ = code_of(stub.ModelInfer, infer_request(ONE), timeout=0.2)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED  # the client's deadline
            code, error = code_of(stub.ModelInfer, infer_request(ONE))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "within 0.5 seconds" in error.details()
    finally:
        hold.unlink()
        held.stop()


def wait_for(condition, what: str) -> None:
    """Until ``condition()`` holds (state another thread changes); a hang guard, not a delay."""
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {CALL_TIMEOUT_S} s"
        time.sleep(0.01)


def test_stopping_finishes_the_calls_in_progress_and_refuses_new_ones_retryably(registry, tmp_path):
    hold = tmp_path / "hold"
    held = GrpcServerThread(build_serving(dataclasses.replace(CONFIG, batch_hold_file=str(hold)), registry))
    hold.touch()
    try:
        with grpc.insecure_channel(held.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            in_progress = stub.ModelInfer.future(infer_request(ONE), timeout=CALL_TIMEOUT_S)
            wait_for(lambda: held.server.drain.calls == 1, "the call's arrival")
            stopped = held.begin_stop(grace=CALL_TIMEOUT_S)
            wait_for(lambda: held.server.drain.draining, "draining")
            code, error = code_of(stub.ModelInfer, infer_request(ONE))
            assert code == grpc.StatusCode.UNAVAILABLE and dict(error.trailing_metadata())["retry-after"] == "1"
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not stopped.done()  # waiting for the call in progress
            hold.unlink()
            assert in_progress.result().outputs[0].name == "logits"
            stopped.result(timeout=CALL_TIMEOUT_S)
    finally:
        hold.unlink(missing_ok=True)
        held.stop()


def test_api_keys_from_metadata(registry):
    key, entry = new_key(["inference"])
    tasks_key, tasks_entry = new_key(["tasks"])
    guarded = GrpcServerThread(build_serving(CONFIG, registry, keys=(entry, tasks_entry)))
    try:
        with grpc.insecure_channel(guarded.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert code_of(stub.ModelInfer, infer_request(ONE))[0] == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(stub.ModelInfer, infer_request(ONE), metadata=(("x-api-key", "fsk_0_bad"),))[0] \
                == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(stub.ModelInfer, infer_request(ONE), metadata=(("x-api-key", tasks_key),))[0] \
                == grpc.StatusCode.PERMISSION_DENIED
            assert code_of(stub.ModelMetadata, pb.ModelMetadataRequest(name=MODEL))[0] \
                == grpc.StatusCode.UNAUTHENTICATED
            for metadata in ((("authorization", f"Bearer {key}"),), (("x-api-key", key),)):
                assert code_of(stub.ModelInfer, infer_request(ONE), metadata=metadata)[0] == grpc.StatusCode.OK
            # The probes stay open, as /v2/health/* do.
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
    finally:
        guarded.stop()


# The fuzz run: malformed requests from a seeded generator; none may end INTERNAL or UNKNOWN (a server fault), nor
# hang (the client's deadline would end it DEADLINE_EXCEEDED).
FUZZ_SEED, FUZZ_CASES = 34, 400
ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}


def random_request(rng: random.Random) -> pb.ModelInferRequest:
    """A request whose every field may be wrong: names, datatype, shape, contents, outputs, parameters."""
    pick = rng.choice
    shape = [pick([-1, 0, 1, 2, 28, 784, 2**31, 2**62, rng.randrange(-5, 40)]) for _ in range(rng.randrange(0, 5))]
    request = pb.ModelInferRequest(model_name=pick([MODEL, MODEL, "", "onnx-tf", "x" * 300]),
                                   model_version=pick(["", "", "1", "\x00"]), id=pick(["", "id"]))
    for _ in range(pick([0, 1, 1, 1, 2])):
        tensor = request.inputs.add(name=pick(["images", "images", "", "other"]),
                                    datatype=pick(["UINT8", "UINT8", "FP32", "BYTES", "", "uint8"]), shape=shape)
        if rng.random() < 0.3:
            field = pick(["uint_contents", "uint_contents", "int_contents", "fp32_contents", "bool_contents"])
            values = [rng.randrange(0, 300) for _ in range(pick([0, 1, 784, 785]))]
            getattr(tensor.contents, field).extend(bool(v % 2) if field == "bool_contents" else v for v in values)
        if rng.random() < 0.1:
            tensor.parameters[pick(["shared_memory_region", "binary_data_size"])].int64_param = 1
    for _ in range(pick([0, 0, 1, 2, 3])):
        request.raw_input_contents.append(rng.randbytes(pick([0, 1, 784, 785, 1568])))
    for _ in range(pick([0, 0, 1, 2])):
        tensor = request.outputs.add(name=pick(["logits", "probabilities", "ood_score", "in_distribution", "x"]))
        if rng.random() < 0.3:
            tensor.parameters["classification"].CopyFrom(pick([
                pb.InferParameter(int64_param=rng.randrange(-2, 13)), pb.InferParameter(string_param="3"),
                pb.InferParameter(bool_param=True), pb.InferParameter(uint64_param=2**63)]))
    return request


def corrupted(rng: random.Random, valid: bytes) -> bytes:
    """A valid request's bytes, truncated, flipped or spliced with random bytes."""
    data = bytearray(valid)
    for _ in range(rng.randrange(1, 8)):
        position = rng.randrange(len(data))
        data[position] = rng.randrange(256)
    return bytes(data[:rng.randrange(len(data) + 1)]) if rng.random() < 0.5 else bytes(data) + rng.randbytes(8)


def test_fuzzed_requests_never_end_internal_nor_hang(channel, stub):
    rng = random.Random(FUZZ_SEED)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    valid = infer_request(ONE).SerializeToString()
    seen: dict[grpc.StatusCode, int] = {}
    for case in range(FUZZ_CASES):
        if case % 10 == 9:  # a good request among the bad ones: they have left the server able to answer
            code, error = code_of(raw, valid)
            assert code == grpc.StatusCode.OK, f"case {case}: {code} {error and error.details()}"
            continue
        if case % 2:
            code, error = code_of(stub.ModelInfer, random_request(rng))
        else:
            code, error = code_of(raw, corrupted(rng, valid))
        assert code in ANSWERS, f"case {case}: {code} {error and error.details()}"
        seen[code] = seen.get(code, 0) + 1
    # The generator reaches past the first check: more than one kind of refusal.
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > FUZZ_CASES // 4 and seen.get(grpc.StatusCode.NOT_FOUND), seen


def test_an_answered_call_feeds_the_stage_histograms_drift_and_the_prediction_log(registry, dataset):
    """What docs/observability.md promises for REST holds for gRPC: the call's stages, its answers in the drift
    window, and a prediction-log row under the call's id (a new id when it sent none)."""
    from service.drift import DriftMonitor
    from service.telemetry import STAGES, metrics

    def stage_counts(backend: str, version: str) -> dict[str, float]:
        (family,) = metrics()["stage"].collect()
        return {sample.labels["stage"]: sample.value for sample in family.samples
                if sample.name.endswith("_count") and sample.labels["backend"] == backend
                and sample.labels["version"] == version}

    logged: list[str] = []

    class Log:
        def record(self, request_id, backend, logits, scores, pixels) -> None:
            logged.append(request_id)

    serving = dataclasses.replace(build_serving(CONFIG, registry), drift=DriftMonitor(100, 3600), predictions=Log())
    loaded = registry.get(MODEL)
    before = stage_counts(loaded.name, loaded.version)
    server = GrpcServerThread(serving)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(infer_request(dataset.test_images[:3], id="call-7"), timeout=CALL_TIMEOUT_S)
            stub.ModelInfer(infer_request(dataset.test_images[3:5]), timeout=CALL_TIMEOUT_S)
    finally:
        server.stop()
    after = stage_counts(loaded.name, loaded.version)
    assert {stage: after[stage] - before.get(stage, 0) for stage in STAGES} == dict.fromkeys(STAGES, 2)
    (window,) = serving.drift.refresh().values()
    assert window["images"] == 5
    assert logged[0] == "call-7" and len(logged) == 2 and len(logged[1]) == 32 and logged[1] != "call-7"
