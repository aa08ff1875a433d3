"""Open Inference Protocol (KServe v2) over REST, beside the native endpoints.

Mounted on the BentoML service (service.service), so v2 clients (tritonclient,
KServe's client, perf_analyzer) work unchanged. One v2 model per backend
(``onnx-torch``, ``onnx-tf``, ``torch``, ``savedmodel``, ``onnx-int8``); its one
version is the content version of the exported model it loads.

* ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]/ready``:
  200 when true; an empty body, as the specification asks.
* ``GET /v2`` (server metadata), ``GET /v2/models`` (every model, loaded or not and why, as Triton's repository
  index lists them), ``GET /v2/models/{name}[/versions/{v}]`` (model metadata),
  ``GET /v2/models/{name}[/versions/{v}]/config`` (Triton's model configuration, read by perf_analyzer).
* ``POST /v2/models/{name}[/versions/{v}]/infer``: input ``images``, ``UINT8[N, 28, 28]``,
  as JSON ``data`` (flat or nested) or as binary data after the JSON header
  (``Inference-Header-Content-Length``); outputs ``logits`` and ``probabilities``,
  ``FP32[N, 10]``, as JSON or binary, or as Triton's ``classification`` strings.

Inference goes through the service's batcher, so v2 and native requests share
batches, limits and admission control. Errors are ``{"error": "..."}``: 400 for a
bad request, 404 for an unknown model or version, 413 over the size limits, 503
while not ready or overloaded (with ``Retry-After``).

Specification: https://github.com/kserve/kserve/blob/master/docs/predict-api/v2/required_api.md;
binary data, classification and model configuration are Triton's extensions,
https://github.com/triton-inference-server/server/tree/main/docs/protocol.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fashion.backends import BACKENDS
from fashion.contract import (
    CLASS_NAMES,
    IMAGE_SIZE,
    INPUT_NAME,
    NUM_CLASSES,
    OUTPUT_NAME,
    TOO_MANY,
    ContractError,
    as_array,
    check_count,
    check_pixel_values,
    softmax,
)
from service import repository, telemetry
from service.admission import RETRY_STATUSES
from service.asgi_types import ASGIApp, Receive, Scope, Send
from service.batcher import Outputs, OverloadedError
from service.inputs import RequestError, receive_body
from service.lifecycle import mirror
from service.registry import LoadedBackend, ModelRegistry, lineage, version_key
from service.serving import Serving, serving_of
from service.stats import RequestTiming

log = logging.getLogger("bentoml.fashion_serve")

SERVER_NAME = "fashion-serve"
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics")
PROBABILITIES = "probabilities"
# "Not clothing" (fashion.ood): a 0-1 score per image and whether it reaches the model's validated threshold.
OOD_SCORE, IN_DISTRIBUTION = "ood_score", "in_distribution"
OUTPUTS = (OUTPUT_NAME, PROBABILITIES, OOD_SCORE, IN_DISTRIBUTION)
# (datatype, dims without the batch dimension) per output.
OUTPUT_SPECS = {OUTPUT_NAME: ("FP32", [NUM_CLASSES]), PROBABILITIES: ("FP32", [NUM_CLASSES]),
                OOD_SCORE: ("FP32", [1]), IN_DISTRIBUTION: ("BOOL", [1])}
INPUT_DATATYPE = "UINT8"
HEADER_LENGTH = "Inference-Header-Content-Length"
# Platform names follow the specification's "<project>_<format>"; a state dict has no listed name.
PLATFORMS = {"onnx": "onnx_onnxv1", "savedmodel": "tensorflow_savedmodel", "torch": "pytorch_statedict"}
CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

# An answer of the plain ASGI route: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class V2Error(Exception):
    """A request the protocol refuses, answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# What a v2 route refuses with the protocol's JSON error (refusal_of).
REFUSED = (V2Error, ContractError, RequestError)


@dataclass(frozen=True)
class RequestedOutput:
    """One output the client asked for, and how to send it."""

    name: str
    binary: bool
    class_count: int = 0


def answers_errors(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Turn :class:`V2Error`, a broken input contract (413 over the image limit, else 400) and the native parser's
    RequestError into the protocol's JSON error."""

    @functools.wraps(handler)
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except REFUSED as exc:
            return error_response(*refusal_of(exc))

    return handle


def refusal_of(exc: V2Error | ContractError | RequestError) -> tuple[str, int]:
    """The message and status the protocol answers for a refused request (:data:`REFUSED`), on every v2 route."""
    if isinstance(exc, V2Error):
        return exc.message, exc.status
    if isinstance(exc, ContractError):
        return exc.message, 413 if exc.reason == TOO_MANY else 400
    return exc.message, int(exc.error_code)  # body limits (service.inputs)


def error_response(message: str, status: int) -> Response:
    """:func:`error_answer` as a Starlette response, for the v2 app's routes: one encoding of the error, wherever
    a v2 request is refused."""
    status, headers, body = error_answer(message, status)
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


def serving(request: Request) -> Serving:
    """The service's parts (put on the request by service.admission), or 503 while it is being created."""
    found = serving_of(request.scope)
    if found is None:
        raise V2Error("the service is starting", 503)
    return found


@functools.cache
def server_version() -> str:
    """The installed fashion-serve version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(SERVER_NAME)
    except PackageNotFoundError:
        return "unknown"


def resolve_model(request: Request) -> LoadedBackend:
    """The loaded backend named in the path, at the version asked for; 404 when there is none."""
    return find_model(serving(request).registry, request.path_params["model"], request.path_params.get("version"))


def find_model(registry: ModelRegistry, name: str, version: str | None) -> LoadedBackend:
    """The loaded backend ``name`` at ``version`` (``None``: the one it serves), for REST and gRPC alike.

    Raises:
        V2Error: 503 while the models load, 404 for a name or version this server does not serve.
    """
    if not registry.ready:  # admission answers first; this covers a race
        raise V2Error("models are not ready yet", 503)
    if name not in BACKENDS:
        raise V2Error(f"unknown model {name[:64]!r}; models here: {sorted(registry.backends)}", 404)
    if name not in registry.backends:  # one of ours this server does not serve: say why, as the native routes do
        raise V2Error(registry.why_not_loaded(name), 404)
    if version is None:  # the serving version, or the canary for its share of requests (service.shadow)
        return registry.get(registry.pin(name))
    try:
        return registry.get(version_key(name, version))
    except KeyError as exc:
        raise V2Error(str(exc.args[0]), 404) from None


async def server_live(request: Request) -> Response:
    """200 while the process runs (admission never refuses this path)."""
    return Response(status_code=200)


async def server_ready(request: Request) -> Response:
    """200 once every configured backend is loaded and warmed up; 503 before, like ``/readyz``."""
    found = serving_of(request.scope)
    return Response(status_code=200 if found is not None and found.not_ready_reason() is None else 503)


@answers_errors
async def server_metadata(request: Request) -> Response:
    """Name, version and the protocol extensions this server implements."""
    return JSONResponse({"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)})


@answers_errors
async def list_models(request: Request) -> Response:
    """Every model this server knows, as Triton's repository index lists them: ``READY`` with its version when
    loaded, else ``UNAVAILABLE`` with the reason (a backend whose runtime this Bento's profile does not carry)."""
    registry = serving(request).registry
    return JSONResponse({"models": index_models(registry)})


def index_models(registry: ModelRegistry) -> list[dict[str, str]]:
    """One repository index entry per known backend (its serving version), the loaded ones first."""
    ready = [{"name": name, "version": backend.manifest["version"], "state": "READY", "reason": ""}
             for name, backend in registry.backends.items()]
    return ready + [{"name": name, "version": "", "state": "UNAVAILABLE", "reason": registry.why_not_loaded(name)}
                    for name in BACKENDS if name not in registry.backends]


@answers_errors
async def model_ready(request: Request) -> Response:
    """200 when the model (and version) is loaded here; 404 with the reason otherwise."""
    resolve_model(request)
    return Response(status_code=200)


@answers_errors
async def model_metadata(request: Request) -> Response:
    """The model's version, platform, input and outputs."""
    registry = serving(request).registry
    backend = resolve_model(request)
    versions = registry.versions.get(backend.name, {backend.version: backend})
    return JSONResponse({**describe_model(backend), "versions": list(versions),
                         # Not in the specification: where each loaded version comes from, and which one serves.
                         "lineage": [{**lineage(v.manifest), "serving": v is registry.backends[backend.name]}
                                     for v in versions.values()]})


@answers_errors
async def model_config(request: Request) -> Response:
    """Triton's model configuration (perf_analyzer reads the batch limit and tensors from it)."""
    return JSONResponse(configure_model(resolve_model(request), serving(request).config.max_images))


def configure_model(backend: LoadedBackend, max_images: int) -> dict[str, Any]:
    """The configuration Triton would report: dims without the batch dimension, batched up to the request limit."""
    return {
        "name": backend.name, "platform": PLATFORMS[BACKENDS[backend.name].runtime],
        "max_batch_size": max_images,
        "input": [{"name": INPUT_NAME, "data_type": f"TYPE_{INPUT_DATATYPE}", "dims": [IMAGE_SIZE, IMAGE_SIZE]}],
        "output": [{"name": name, "data_type": f"TYPE_{OUTPUT_SPECS[name][0]}", "dims": OUTPUT_SPECS[name][1]}
                   for name in served_outputs(backend)],
        # Requests are batched together (service.batcher), as Triton's dynamic batcher would.
        "dynamic_batching": {},
    }


def served_outputs(backend: LoadedBackend) -> tuple[str, ...]:
    """The outputs this model can answer: perf_analyzer asks for every output its metadata lists."""
    return OUTPUTS if backend.detector is not None else (OUTPUT_NAME, PROBABILITIES)


def describe_model(backend: LoadedBackend) -> dict[str, Any]:
    """The specification's model metadata object for one loaded backend."""
    return {
        "name": backend.name, "versions": [backend.manifest["version"]],
        "platform": PLATFORMS[BACKENDS[backend.name].runtime],
        "inputs": [{"name": INPUT_NAME, "datatype": INPUT_DATATYPE, "shape": [-1, IMAGE_SIZE, IMAGE_SIZE]}],
        "outputs": [{"name": name, "datatype": OUTPUT_SPECS[name][0], "shape": [-1, *OUTPUT_SPECS[name][1]]}
                    for name in served_outputs(backend)],
    }


async def infer(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v2/models/{model}[/versions/{version}]/infer``, a plain ASGI app (:class:`AsgiRoute`).

    The route nearly every request takes: no request or response objects, no router in front of it when the
    service's inference lane reaches it (service.seams.InferenceLane). Its errors are the protocol's JSON, as
    :func:`answers_errors` answers the other routes; a client gone before its body arrived gets no answer.
    """
    try:
        status, headers, body = await answer_inference(scope, receive)
    except ClientDisconnect:
        return
    except REFUSED as exc:
        status, headers, body = error_answer(*refusal_of(exc))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def answer_inference(scope: Scope, receive: Receive) -> Answer:
    """Run the batch through the shared batcher and answer the outputs asked for, on the version resolved when the
    request started (a promotion meanwhile does not change it); its times go to the statistics (service.stats).
    Returns the status, headers and body."""
    started = time.perf_counter()
    found = serving_of(scope)
    if found is None:
        raise V2Error("the service is starting", 503)
    params = scope["path_params"]
    backend = find_model(found.registry, params["model"], params.get("version"))
    config = found.config
    headers = first_values(scope["headers"])
    body = await receive_body(receive, latin1(headers.get(b"content-length")), config.max_body_bytes)
    body = inflate(body, latin1(headers.get(b"content-encoding")), config.max_body_bytes)
    header, binary = split_body(body, latin1(headers.get(HEADER_LENGTH.lower().encode())))
    payload = parse_header(header)
    pixels = read_input(payload["inputs"], binary, config.max_images)
    outputs = requested_outputs(payload)
    if backend.detector is None and "outputs" not in payload:  # a model exported before the detector existed
        outputs = [o for o in outputs if o.name not in (OOD_SCORE, IN_DISTRIBUTION)]
    scored = backend.detector is not None and any(o.name in (OOD_SCORE, IN_DISTRIBUTION) for o in outputs)
    parsed = time.perf_counter()
    stats = found.registry.stats
    try:
        result = await found.batcher.predict(version_key(backend.name, backend.version), pixels, score=scored)
    except OverloadedError as exc:
        stats.record_failure(backend.name, backend.version, time.perf_counter() - started)
        telemetry.refused(exc.reason)
        raise V2Error(str(exc), 503) from None
    except Exception:  # a model failure: JSON like every other error, the details in the log
        log.exception("v2 inference on %s failed", backend.name)
        stats.record_failure(backend.name, backend.version, time.perf_counter() - started)
        raise V2Error("inference failed; the server log has the details", 500) from None
    answered = time.perf_counter()
    found.answered(backend, parsed, pixels, result)
    mirror(found.registry, found.batcher, version_key(backend.name, backend.version), pixels, result.logits)
    answer = {"model_name": backend.name, "model_version": backend.manifest["version"]}
    if "id" in payload:
        answer["id"] = payload["id"]
    response = encode_answer(answer, [output_tensor(output, result, backend) for output in outputs])
    done = time.perf_counter()
    stats.record_success(backend.name, backend.version, RequestTiming(
        len(pixels), done - started, parsed - started, result.queue_s, result.compute_s, done - answered,
        result.execution))
    return response


def first_values(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """An ASGI request's headers by name (lower case in ASGI); a repeated one keeps its first value, as Starlette's
    ``Headers.get`` reads it."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found.setdefault(name, value)
    return found


def latin1(value: bytes | None) -> str | None:
    """A raw header value as text (HTTP header bytes are Latin-1, as Starlette reads them)."""
    return None if value is None else value.decode("latin-1")


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body inflated when the client compressed it (tritonclient can), within the size limit."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in CONTENT_ENCODINGS:
        raise V2Error(f"unsupported Content-Encoding {encoding[:32]!r}; use gzip, deflate or none", 415)
    inflater = zlib.decompressobj(CONTENT_ENCODINGS[encoding])
    try:
        # Inflate at most one byte past the limit: a small bomb never grows in memory.
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise V2Error(f"body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise V2Error(f"inflated request body is over the limit of {limit:,} bytes", 413)
    if not inflater.eof:
        raise V2Error(f"{encoding} body is truncated")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (binary data extension)."""
    if header_length is None:
        return body, b""
    digits = header_length.strip()
    if not (digits.isascii() and digits.isdigit()) or not 0 < int(digits) <= len(body):
        raise V2Error(f"{HEADER_LENGTH} must be the JSON header's size in bytes, from 1 to the body's "
                      f"{len(body):,}; got {header_length[:32]!r}")
    size = int(digits)
    return body[:size], body[size:]


def parse_header(header: bytes) -> dict[str, Any]:
    """The inference request object, checked for the fields the specification defines."""
    try:
        payload = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise V2Error(f"the inference request is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of nested brackets: json gives up before the size limit does
        raise V2Error("the inference request is nested too deeply") from None
    if not isinstance(payload, dict):
        raise V2Error("the inference request must be a JSON object")
    require_known(payload, {"id", "parameters", "inputs", "outputs"}, "inference request")
    if "id" in payload and not isinstance(payload["id"], str):
        raise V2Error("'id' must be a string")
    if not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise V2Error(f"'inputs' must be a list holding the input {INPUT_NAME!r}")
    parameters(payload, "inference request")
    return payload


def require_known(obj: dict[str, Any], known: set[str], what: str) -> None:
    """Refuse fields the specification does not define (a typo would otherwise be ignored)."""
    unknown = sorted(set(obj) - known)
    if unknown:
        raise V2Error(f"unknown field(s) {unknown} in the {what}; expected {sorted(known)}")


def parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    """An object's ``parameters`` (empty when absent); shared memory is refused, not ignored."""
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise V2Error(f"'parameters' of the {what} must be a JSON object")
    if any(key.startswith("shared_memory") for key in params):
        raise V2Error("shared memory is not supported by this server; send the tensor in the request")
    return params


def read_input(inputs: list[Any], binary: bytes, max_images: int) -> np.ndarray:
    """``uint8[N, 28, 28]`` pixels from the one input ``images``, as JSON data or binary data."""
    if len(inputs) != 1 or not isinstance(inputs[0], dict) or inputs[0].get("name") != INPUT_NAME:
        names = [i.get("name") if isinstance(i, dict) else i for i in inputs][:4]
        raise V2Error(f"expected exactly one input named {INPUT_NAME!r}; got {names}")
    tensor = inputs[0]
    require_known(tensor, {"name", "shape", "datatype", "parameters", "data"}, "input")
    if tensor.get("datatype") != INPUT_DATATYPE:
        raise V2Error(f"input {INPUT_NAME!r} must have datatype {INPUT_DATATYPE} (pixels 0-255); "
                      f"got {str(tensor.get('datatype'))[:16]!r}")
    shape = check_shape(tensor.get("shape"), max_images)
    size = math.prod(shape)
    binary_size = parameters(tensor, "input").get("binary_data_size")
    if binary_size is None:
        if binary:
            raise V2Error(f"{len(binary):,} bytes of binary data follow the JSON header, but no input "
                          "declares 'binary_data_size'")
        if "data" not in tensor:
            raise V2Error(f"input {INPUT_NAME!r} has neither 'data' nor 'binary_data_size'")
        return json_tensor(tensor["data"], shape)
    if "data" in tensor:
        raise V2Error(f"input {INPUT_NAME!r} has both 'data' and 'binary_data_size'")
    if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size != size:
        raise V2Error(f"'binary_data_size' of {INPUT_NAME!r} must be {size:,} (shape {shape}, 1 byte per "
                      f"UINT8); got {binary_size!r}")
    if len(binary) != binary_size:
        raise V2Error(f"{len(binary):,} bytes of binary data follow the JSON header; the input declares "
                      f"{binary_size:,}")
    return np.frombuffer(binary, dtype=np.uint8).reshape(shape)


def check_shape(shape: Any, max_images: int) -> list[int]:
    """``[N, 28, 28]`` with ``1 <= N <= max_images`` (the count rule is fashion.contract's)."""
    if (not isinstance(shape, list) or len(shape) != 3 or shape[1:] != [IMAGE_SIZE, IMAGE_SIZE]
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise V2Error(f"input {INPUT_NAME!r} must have shape [N, {IMAGE_SIZE}, {IMAGE_SIZE}]; "
                      f"got {str(shape)[:64]}")
    check_count(shape[0], max_images, f"input {INPUT_NAME!r} ")
    return shape


def json_tensor(data: Any, shape: list[int]) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) as ``uint8`` of ``shape``; whole numbers 0-255 only."""
    array = as_array(data, f"'data' of {INPUT_NAME!r}")
    if array.size != math.prod(shape):
        raise V2Error(f"'data' of {INPUT_NAME!r} holds {array.size:,} values; shape {shape} needs "
                      f"{math.prod(shape):,}")
    # Integers only, as Triton reads UINT8 from JSON: a float or a boolean is a client's mistake.
    return check_pixel_values(array, integers_only=True, what=f"'data' of {INPUT_NAME!r}").reshape(shape)


def requested_outputs(payload: dict[str, Any]) -> list[RequestedOutput]:
    """The outputs asked for; all of them when none are named (binary if ``binary_data_output``)."""
    default_binary = parameters(payload, "inference request").get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise V2Error("'binary_data_output' must be true or false")
    asked = payload.get("outputs")
    if asked is None:
        return [RequestedOutput(name, default_binary) for name in OUTPUTS]
    if not isinstance(asked, list) or not asked:
        raise V2Error(f"'outputs' must be a non-empty list of outputs from {list(OUTPUTS)}")
    outputs = []
    for output in asked:
        if not isinstance(output, dict) or output.get("name") not in OUTPUTS:
            name = output.get("name") if isinstance(output, dict) else output
            raise V2Error(f"unknown output {str(name)[:64]!r}; the model's outputs are {list(OUTPUTS)}")
        require_known(output, {"name", "parameters"}, "output")
        params = parameters(output, "output")
        binary = params.get("binary_data", default_binary)
        class_count = params.get("classification", 0)
        if not isinstance(binary, bool):
            raise V2Error("'binary_data' must be true or false")
        if isinstance(class_count, bool) or not isinstance(class_count, int) or not 0 <= class_count <= NUM_CLASSES:
            raise V2Error(f"'classification' must be a whole number from 0 (off) to {NUM_CLASSES}")
        outputs.append(RequestedOutput(output["name"], binary, class_count))
    if len({o.name for o in outputs}) != len(outputs):
        raise V2Error("each output may be asked for once")
    return outputs


def output_values(name: str, result: Outputs, backend: LoadedBackend) -> np.ndarray:
    """The values of one output: logits, calibrated probabilities, or the "not clothing" fields (``[N, 1]``) from
    the scores the batch computed (:func:`infer` asks for them when an output needs them)."""
    if name == OUTPUT_NAME:
        return result.logits
    if name == PROBABILITIES:  # computed with the batch; a stand-in model's answer has none
        return result.probabilities if result.probabilities is not None else softmax(result.logits,
                                                                                     backend.temperature)
    if backend.detector is None or result.scores is None:
        raise V2Error(f"output {name!r}: model {backend.manifest['version']} was exported without a detector", 400)
    scores = result.scores[:, None]
    return scores if name == OOD_SCORE else backend.detector.in_distribution(scores)


def output_tensor(output: RequestedOutput, result: Outputs, backend: LoadedBackend) -> tuple[dict[str, Any],
                                                                                            bytes | None]:
    """One response output (and its binary data when asked for binary)."""
    values = output_values(output.name, result, backend)
    if output.class_count:
        if output.name not in (OUTPUT_NAME, PROBABILITIES):
            raise V2Error(f"'classification' applies to {OUTPUT_NAME} and {PROBABILITIES}, not {output.name}")
        return classification_tensor(output, values)
    datatype = OUTPUT_SPECS[output.name][0]
    tensor: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": list(values.shape)}
    if output.binary:
        raw = values.astype("<f4" if datatype == "FP32" else "?").tobytes()
        return {**tensor, "parameters": {"binary_data_size": len(raw)}}, raw
    return {**tensor, "data": values.ravel().tolist()}, None


def classification_tensor(output: RequestedOutput, values: np.ndarray) -> tuple[dict[str, Any], bytes | None]:
    """Triton's classification extension: the top classes as ``BYTES`` ``"value:index:label"``, best first."""
    strings, shape = top_classes(values, output.class_count)
    tensor: dict[str, Any] = {"name": output.name, "datatype": "BYTES", "shape": shape}
    if output.binary:
        raw = pack_bytes(strings)
        return {**tensor, "parameters": {"binary_data_size": len(raw)}}, raw
    return {**tensor, "data": strings}, None


def top_classes(values: np.ndarray, count: int) -> tuple[list[str], list[int]]:
    """The ``count`` best classes of each row as ``"value:index:label"``, best first, and their shape ``[N, count]``."""
    top = np.argsort(-values, axis=1, kind="stable")[:, :count]
    strings = [f"{row[c]:f}:{c}:{CLASS_NAMES[c]}" for row, classes in zip(values, top, strict=True) for c in classes]
    return strings, list(top.shape)


def pack_bytes(strings: list[str]) -> bytes:
    """BYTES elements in binary form: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(s)) + s for s in (s.encode() for s in strings))


def encode_answer(answer: dict[str, Any], tensors: list[tuple[dict[str, Any], bytes | None]]) -> Answer:
    """JSON, or the JSON header followed by the binary outputs in order (binary data extension)."""
    answer = {**answer, "outputs": [tensor for tensor, _ in tensors]}
    raw = [data for _, data in tensors if data is not None]
    if not raw:
        return plain_answer(200, json_bytes(answer))
    header = json_bytes(answer)
    body = header + b"".join(raw)
    return 200, [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode()),
                 (HEADER_LENGTH.lower().encode(), str(len(header)).encode())], body


def error_answer(message: str, status: int) -> Answer:
    """The protocol's error object, ``Retry-After`` where a retry may succeed; tritonclient raises it as
    ``InferenceServerException(message)``."""
    return plain_answer(status, json_bytes({"error": message}), status in RETRY_STATUSES)


def plain_answer(status: int, body: bytes, retry: bool = False) -> Answer:
    """A JSON answer's status, headers (``Retry-After: 1`` when ``retry``) and body."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, [*headers, (b"retry-after", b"1")] if retry else headers, body


def json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON, the text Starlette's JSONResponse renders for the same value: orjson writes
    the same shortest round-trip floats as ``json`` at a fraction of its time, which the answer's floats made the
    largest single cost of the route (docs/serving.md, "The inference lane")."""
    return orjson.dumps(value)


def infer_params(path: str) -> dict[str, str] | None:
    """The path parameters of an inference path (``/v2/models/{model}[/versions/{version}]/infer``), else
    ``None``; what the router of :data:`app` would match."""
    parts = path.split("/")
    if parts[-1] != "infer" or parts[:3] != ["", "v2", "models"] or not parts[3]:
        return None
    if len(parts) == 5:
        return {"model": parts[3]}
    if len(parts) == 7 and parts[4] == "versions" and parts[5]:
        return {"model": parts[3], "version": parts[5]}
    return None


class AsgiRoute:
    """A plain ASGI app as a Starlette route's endpoint: Starlette wraps a function in its request and response
    objects, an object it calls as it is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


MODEL = "/v2/models/{model}"
VERSION = "/v2/models/{model}/versions/{version}"

# Full paths, mounted at "/": BentoML's mount does not match the bare "/v2" of server metadata
# when the app is mounted at "/v2" (it would redirect to "/v2/", which v2 clients do not follow).
# Inference first: the router tries the routes in order, and nearly every request is an inference.
app = Starlette(routes=[
    *(Route(f"{base}/infer", AsgiRoute(infer), methods=["POST"]) for base in (MODEL, VERSION)),
    # Before the model routes: "/v2/models/stats" would otherwise name a model called "stats".
    *repository.ROUTES,
    Route("/v2", server_metadata),
    Route("/v2/health/live", server_live),
    Route("/v2/health/ready", server_ready),
    Route("/v2/models", list_models),
    *(Route(base, model_metadata) for base in (MODEL, VERSION)),
    *(Route(f"{base}/ready", model_ready) for base in (MODEL, VERSION)),
    *(Route(f"{base}/config", model_config) for base in (MODEL, VERSION)),
])
