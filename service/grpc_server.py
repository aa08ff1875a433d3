"""The Open Inference Protocol (KServe v2) over gRPC, beside REST, in the same worker.

``inference.GRPCInferenceService`` (service/protocol/open_inference.proto) on ``FASHION_GRPC_PORT``: ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, and Triton's ModelConfig and ModelStatistics,
so tritonclient's gRPC client and perf_analyzer work unchanged; and gRPC's health checking service
(``grpc.health.v1.Health``) for probes.
The service starts it on the worker's own event loop (service.service) and hands it the same :class:`Serving` as the
REST routes: one batcher, one registry, one in-flight count, the same API keys. The models, versions, metadata and
outputs (the "not clothing" ones included) are service.v2's, so the two protocols cannot drift. An answered
inference is one request to service.telemetry as an HTTP one is (its stages, the drift window, the prediction log,
traces), under the call's ``id``.

Tensors: the one input ``images``, ``UINT8[N, 28, 28]``, as ``raw_input_contents`` (little-endian bytes) or typed
``contents.uint_contents``, never both (the specification forbids mixing); every output is answered in
``raw_output_contents`` (``FP32``; ``in_distribution`` is ``BOOL``, one byte each), as Triton answers.

Status codes, never INTERNAL for a client's mistake and never a hang:

* INVALID_ARGUMENT: a malformed request (input, shape, datatype, values, outputs, parameters);
* NOT_FOUND: a model or version this server does not serve;
* UNAUTHENTICATED / PERMISSION_DENIED: no valid API key in ``authorization: Bearer <key>`` or ``x-api-key``, or
  one without the ``inference`` scope (service.auth);
* RESOURCE_EXHAUSTED: over the in-flight limit, the batcher's queue full, or a key over its rate, with
  ``retry-after`` (seconds) and ``grpc-retry-pushback-ms`` in the trailing metadata; gRPC itself answers it for a
  message over ``FASHION_MAX_BODY_BYTES``;
* UNAVAILABLE: models not ready yet (and while the server drains);
* DEADLINE_EXCEEDED: no answer within the client's deadline or the service's own request timeout.

Specification: https://github.com/kserve/open-inference-protocol (gRPC section); ModelConfig is Triton's,
https://github.com/triton-inference-server/common/tree/main/protobuf; health checking:
https://github.com/grpc/grpc/blob/master/doc/health-checking.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fashion.contract import INPUT_NAME, NUM_CLASSES, ContractError, check_pixel_values
from service import telemetry
from service.batcher import OverloadedError
from service.protocol import open_inference_pb2 as pb
from service.registry import version_key
from service.repository import model_statistics
from service.serving import Serving
from service.stats import RequestTiming
from service.v2 import (
    EXTENSIONS,
    IN_DISTRIBUTION,
    INPUT_DATATYPE,
    OOD_SCORE,
    OUTPUT_NAME,
    OUTPUT_SPECS,
    OUTPUTS,
    PROBABILITIES,
    SERVER_NAME,
    V2Error,
    check_shape,
    configure_model,
    describe_model,
    find_model,
    output_values,
    pack_bytes,
    server_version,
    top_classes,
)

log = logging.getLogger("bentoml.fashion_serve")

SERVICE_NAME = "inference.GRPCInferenceService"
# Answered without a key and before the models are ready, like /v2/health/* (service.auth.OPEN_PATHS).
OPEN_RPCS = frozenset({"ServerLive", "ServerReady"})
RETRY_AFTER_S = 1
# REST's status for each V2Error, as a gRPC code name (grpc.StatusCode's): 413 is the image limit here, a
# malformed request; 500 a model failure, the one fault that is the server's.
CODE_OF_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT",
                  429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 500: "INTERNAL"}
CODE_OF_AUTH = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}
TYPED_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                "fp32_contents", "fp64_contents", "bytes_contents")

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


class StatusError(Exception):
    """A call answered with gRPC status ``code`` (a ``grpc.StatusCode`` name) and ``message``."""

    def __init__(self, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after_s = code, message, retry_after_s

    def trailers(self) -> tuple[tuple[str, str], ...]:
        """Retry information for a refusal the client should retry later (gRPC's retry pushback and REST's header)."""
        if self.retry_after_s is None:
            return ()
        return (("retry-after", str(self.retry_after_s)), ("grpc-retry-pushback-ms", str(self.retry_after_s * 1000)))


@dataclass(frozen=True)
class GrpcSettings:
    """Where and how the gRPC server listens: ``host:port`` (port 0: any free one), the largest message either way
    (``FASHION_MAX_BODY_BYTES``, REST's body limit), and the service's request timeout in seconds."""

    host: str
    port: int
    max_message_bytes: int
    timeout_s: float


def answers_status(rpc: Handler) -> Handler:
    """Turn every refusal into its status code (``context.abort``), run the call within the service's timeout, keep
    the API keys' rule (every RPC but the open ones needs a key with the ``inference`` scope), and count the call
    by method and status code (:func:`metrics`)."""

    @functools.wraps(rpc)
    async def handle(self: InferenceServicer, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            answer = await self.answer(rpc, request, context)
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            count_call(rpc.__name__, "CANCELLED", started)
            raise
        # Counted before the client can see the answer, so that a client reading /metrics next finds its call.
        count_call(rpc.__name__, answer.code if isinstance(answer, StatusError) else "OK", started)
        if isinstance(answer, StatusError):
            await context.abort(grpc.StatusCode[answer.code], answer.message, trailing_metadata=answer.trailers())
        return answer

    return handle  # type: ignore[return-value]


@functools.cache
def metrics() -> dict[str, Any]:
    """Prometheus series for the gRPC calls, created once per process (BentoML serves them on /metrics, beside
    the batcher's, which gRPC and REST share)."""
    from prometheus_client import Counter, Histogram

    return {
        "calls": Counter("fashion_grpc_requests", "gRPC calls answered, by method and status code", ["method", "code"]),
        "seconds": Histogram("fashion_grpc_request_duration_seconds", "Time to answer a gRPC call", ["method"],
                             buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
    }


def count_call(method: str, code: str, started: float) -> None:
    """One answered call of ``method`` with status ``code``, begun at ``started`` (``time.perf_counter``)."""
    series = metrics()
    series["calls"].labels(method, code).inc()
    series["seconds"].labels(method).observe(time.perf_counter() - started)


class Undecodable:
    """What the server hands a method for bytes that are not its request message (gRPC would answer UNKNOWN)."""

    def __init__(self, message: str) -> None:
        self.message = message


def lenient(message_class: Any) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: bytes that do not parse become :class:`Undecodable`."""

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Undecodable(f"the request is not a valid {message_class.DESCRIPTOR.name}: {exc}")

    return parse


class Drain:
    """The gRPC calls in progress, and whether the server is draining (stopping after SIGTERM).

    gRPC's own ``stop(grace)`` ends calls that arrive during the grace period CANCELLED, which clients do not retry;
    while draining, inference is refused UNAVAILABLE with retry information instead (another replica can answer)
    and health checks say NOT_SERVING, and ``stop`` waits for the calls in progress before gRPC's.
    """

    def __init__(self) -> None:
        self.draining = False
        self.calls = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.calls += 1
        self.idle.clear()

    def leave(self) -> None:
        self.calls -= 1
        if not self.calls:
            self.idle.set()


class InferenceServicer:
    """``inference.GRPCInferenceService``'s methods over one worker's :class:`Serving`; each is one call of the
    protocol, named as the specification names it (grpcio looks the methods up by those names)."""

    def __init__(self, serving: Serving, settings: GrpcSettings, drain: Drain) -> None:
        self.serving = serving
        self.settings = settings
        self.drain = drain

    async def answer(self, rpc: Callable[..., Awaitable[Any]], request: Any, context: Any) -> Any:
        """The call's response, or the :class:`StatusError` it is refused with."""
        try:
            if isinstance(request, Undecodable):
                raise StatusError("INVALID_ARGUMENT", request.message)
            if rpc.__name__ not in OPEN_RPCS:
                self.check_key(rpc.__name__, context)
            async with asyncio.timeout(self.settings.timeout_s):
                return await rpc(self, request, context)
        except StatusError as exc:
            return exc
        except V2Error as exc:
            return StatusError(CODE_OF_STATUS.get(exc.status, "INVALID_ARGUMENT"), exc.message,
                               RETRY_AFTER_S if exc.status == 503 else None)
        except ContractError as exc:
            return StatusError("INVALID_ARGUMENT", exc.message)
        except TimeoutError:
            return StatusError("DEADLINE_EXCEEDED", f"not able to answer within {self.settings.timeout_s} seconds")

    def check_key(self, rpc: str, context: Any) -> None:
        """Refuse a call without a valid key for its scope, as admission does for REST (service.auth)."""
        keys = self.serving.keys
        if keys is None:
            return
        headers = [(str(k).encode("latin-1"), v if isinstance(v, bytes) else str(v).encode("latin-1"))
                   for k, v in (context.invocation_metadata() or ())]
        refused = keys.check({"path": f"/{SERVICE_NAME}/{rpc}", "headers": headers})
        if refused is not None:
            retry = dict(refused.headers).get(b"retry-after")
            raise StatusError(CODE_OF_AUTH[refused.status], refused.message, int(retry) if retry else None)

    @answers_status
    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (the protocol's name)
        """Live while the worker answers at all."""
        return pb.ServerLiveResponse(live=True)

    @answers_status
    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Ready once every configured backend is loaded and warm, like ``/readyz``."""
        return pb.ServerReadyResponse(ready=self.serving.not_ready_reason() is None)

    @answers_status
    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Ready when the model (and version) is loaded here; not ready while loading; NOT_FOUND otherwise."""
        if not self.serving.registry.ready:
            return pb.ModelReadyResponse(ready=False)
        find_model(self.serving.registry, request.name, request.version or None)
        return pb.ModelReadyResponse(ready=True)

    @answers_status
    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Name, version and the protocol extensions this server implements."""
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=list(EXTENSIONS))

    @answers_status
    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        """The model's versions, platform, input and outputs (service.v2.describe_model)."""
        described = describe_model(find_model(self.serving.registry, request.name, request.version or None))
        tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in described[key]]
                   for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=described["name"], versions=described["versions"],
                                        platform=described["platform"], **tensors)

    @answers_status
    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Triton's model configuration (service.v2.configure_model), which perf_analyzer reads."""
        backend = find_model(self.serving.registry, request.name, request.version or None)
        config = configure_model(backend, self.serving.config.max_images)
        tensors = {key: [kind(name=t["name"], data_type=pb.DataType.Value(t["data_type"]), dims=t["dims"])
                         for t in config[key]] for key, kind in (("input", pb.ModelInput), ("output", pb.ModelOutput))}
        return pb.ModelConfigResponse(config=pb.ModelConfig(
            name=config["name"], platform=config["platform"], max_batch_size=config["max_batch_size"],
            dynamic_batching=pb.ModelDynamicBatching(), **tensors))

    @answers_status
    async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Triton's statistics, the same as REST's (service.repository.model_statistics); NOT_FOUND for a model or
        version not loaded here."""
        try:
            answer = model_statistics(self.serving.registry, request.name, request.version)
        except KeyError as exc:
            raise StatusError("NOT_FOUND", str(exc.args[0])) from None
        return json_format.ParseDict(answer, pb.ModelStatisticsResponse())

    @answers_status
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Admit the call (in-flight limit, readiness), then run it through the shared batcher."""
        serving = self.serving
        if self.drain.draining:
            raise StatusError("UNAVAILABLE", "the server is shutting down; retry on another replica", RETRY_AFTER_S)
        if serving.in_flight.count >= serving.config.max_in_flight:
            raise StatusError("RESOURCE_EXHAUSTED", f"over {serving.config.max_in_flight} requests in progress; "
                          "retry shortly", RETRY_AFTER_S)
        not_ready = serving.not_ready_reason()
        if not_ready:
            raise StatusError("UNAVAILABLE", f"models are not ready yet ({not_ready})", RETRY_AFTER_S)
        serving.in_flight.enter(context.peer())
        self.drain.enter()
        answered = False
        try:
            response = await self.infer(request)
            answered = True
            return response
        finally:
            serving.in_flight.leave(answered)
            self.drain.leave()

    async def infer(self, request: Any) -> Any:
        """The inference as one request of service.telemetry (its id the call's ``id``, or a new one, in its log
        lines; its stages, drift and prediction-log rows as REST's), then :meth:`run`."""
        started = time.perf_counter()
        ctx = telemetry.RequestContext(telemetry.id_or_new(request.id), started)
        token = telemetry.CURRENT.set(ctx)
        try:
            response = await self.run(request, started)
            ended = time.perf_counter()
            telemetry.observe(ctx, 200, ended)
            if ctx.tracer is not None:
                ctx.tracer.export(ctx, 200, ended)
            return response
        finally:
            telemetry.CURRENT.reset(token)

    async def run(self, request: Any, started: float) -> Any:
        """Check the request, wait for the batch, encode the outputs; its times go to the statistics
        (service.stats), as REST's do."""
        backend = find_model(self.serving.registry, request.model_name, request.model_version or None)
        refuse_shared_memory(request.parameters, "the request")
        pixels = read_images(request, self.serving.config.max_images)
        outputs = requested_outputs(request, backend.detector is not None)
        scored = backend.detector is not None and any(name in (OOD_SCORE, IN_DISTRIBUTION) for name, _ in outputs)
        parsed = time.perf_counter()
        stats = self.serving.registry.stats
        try:
            result = await self.serving.batcher.predict(version_key(backend.name, backend.version), pixels,
                                                        score=scored)
        except OverloadedError as exc:
            stats.record_failure(backend.name, backend.version, time.perf_counter() - started)
            raise StatusError("RESOURCE_EXHAUSTED", str(exc), RETRY_AFTER_S) from None
        except Exception:  # a model failure: the server's fault, the details in the log
            log.exception("gRPC inference on %s failed", backend.name)
            stats.record_failure(backend.name, backend.version, time.perf_counter() - started)
            raise StatusError("INTERNAL", "inference failed; the server log has the details") from None
        self.serving.answered(backend, parsed, pixels, result)
        answered = time.perf_counter()
        response = self.encode(request, backend, outputs, result)
        done = time.perf_counter()
        stats.record_success(backend.name, backend.version, RequestTiming(
            len(pixels), done - started, parsed - started, result.queue_s, result.compute_s, done - answered,
            result.execution))
        return response

    @staticmethod
    def encode(request: Any, backend: Any, outputs: list[tuple[str, int]], result: Any) -> Any:
        """The response: every requested output as raw little-endian bytes, as Triton answers."""
        response = pb.ModelInferResponse(model_name=backend.name, model_version=backend.version,
                                         id=request.id)
        for name, class_count in outputs:
            values = output_values(name, result, backend)
            if class_count:
                strings, shape = top_classes(values, class_count)
                datatype, raw = "BYTES", pack_bytes(strings)
            else:
                datatype, shape = OUTPUT_SPECS[name][0], list(values.shape)
                raw = values.astype("<f4" if datatype == "FP32" else "?").tobytes()
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)
        return response


def refuse_shared_memory(parameters: Any, what: str) -> None:
    """Shared memory is refused, not ignored (the tensor would be read from nowhere)."""
    if any(key.startswith("shared_memory") for key in parameters):
        raise StatusError("INVALID_ARGUMENT", f"shared memory is not supported by this server ({what}); "
                      "send the tensor in the request")


def read_images(request: Any, max_images: int) -> np.ndarray:
    """``uint8[N, 28, 28]`` from the one input ``images``, raw or typed, never both."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = [tensor.name[:64] for tensor in request.inputs][:4]
        raise StatusError("INVALID_ARGUMENT", f"expected exactly one input named {INPUT_NAME!r}; got {names}")
    tensor = request.inputs[0]
    refuse_shared_memory(tensor.parameters, f"input {INPUT_NAME!r}")
    if tensor.datatype != INPUT_DATATYPE:
        raise StatusError("INVALID_ARGUMENT", f"input {INPUT_NAME!r} must have datatype {INPUT_DATATYPE} "
                      f"(pixels 0-255); got {tensor.datatype[:16]!r}")
    shape = check_shape(list(tensor.shape), max_images)
    size = math.prod(shape)
    if request.raw_input_contents:
        if tensor.HasField("contents"):
            raise StatusError("INVALID_ARGUMENT", "the request has both raw_input_contents and typed contents; "
                          "the protocol allows one or the other")
        if len(request.raw_input_contents) != 1:
            raise StatusError("INVALID_ARGUMENT", f"raw_input_contents holds {len(request.raw_input_contents)} "
                          "tensors; the request has 1 input")
        raw = request.raw_input_contents[0]
        if len(raw) != size:
            raise StatusError("INVALID_ARGUMENT", f"raw_input_contents of {INPUT_NAME!r} holds {len(raw):,} bytes; "
                          f"shape {shape} needs {size:,} (1 byte per UINT8)")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    return typed_images(tensor.contents, shape)


def typed_images(contents: Any, shape: list[int]) -> np.ndarray:
    """Pixels from ``contents.uint_contents`` (where the protocol puts UINT8 elements), 0-255 only."""
    others = [field for field in TYPED_FIELDS if field != "uint_contents" and getattr(contents, field)]
    if others:
        raise StatusError("INVALID_ARGUMENT", f"UINT8 elements go in contents.uint_contents; got {others}")
    values = contents.uint_contents
    if len(values) != math.prod(shape):
        raise StatusError("INVALID_ARGUMENT", f"contents of {INPUT_NAME!r} hold {len(values):,} values; shape {shape} "
                      f"needs {math.prod(shape):,} (or send raw_input_contents)")
    pixels = np.fromiter(values, dtype=np.uint32, count=len(values))
    return check_pixel_values(pixels, integers_only=True, what=f"contents of {INPUT_NAME!r}").reshape(shape)


def requested_outputs(request: Any, has_detector: bool) -> list[tuple[str, int]]:
    """``(name, classification count)`` per output asked for; all the model's outputs when none are named."""
    if not request.outputs:
        return [(name, 0) for name in OUTPUTS if has_detector or name not in (OOD_SCORE, IN_DISTRIBUTION)]
    outputs = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise StatusError("INVALID_ARGUMENT", f"unknown output {output.name[:64]!r}; the model's outputs are "
                          f"{list(OUTPUTS)}")
        refuse_shared_memory(output.parameters, f"output {output.name!r}")
        outputs.append((output.name, classification_count(output)))
    if len({name for name, _ in outputs}) != len(outputs):
        raise StatusError("INVALID_ARGUMENT", "each output may be asked for once")
    return outputs


def classification_count(output: Any) -> int:
    """Triton's ``classification`` parameter: how many top classes to answer as strings (0: the values)."""
    if "classification" not in output.parameters:
        return 0
    param = output.parameters["classification"]
    kind = param.WhichOneof("parameter_choice")
    count = getattr(param, kind) if kind in ("int64_param", "uint64_param") else -1
    if not 0 <= count <= NUM_CLASSES:
        raise StatusError("INVALID_ARGUMENT", f"'classification' must be a whole number from 0 (off) to {NUM_CLASSES}")
    if count and output.name not in (OUTPUT_NAME, PROBABILITIES):
        raise StatusError("INVALID_ARGUMENT", f"'classification' applies to {OUTPUT_NAME} and {PROBABILITIES}, "
                      f"not {output.name}")
    return count


class ReadinessHealth(health_pb2_grpc.HealthServicer):
    """gRPC's health checking service: SERVING once the models are ready, NOT_SERVING before, for the server as a
    whole (``""``) and for ``inference.GRPCInferenceService``; NOT_FOUND for any other service name. A Kubernetes
    ``grpc`` probe calls Check; Watch is left to the base class (UNIMPLEMENTED)."""

    def __init__(self, serving: Serving, drain: Drain) -> None:
        self.serving = serving
        self.drain = drain

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 (the protocol's name)
        if request.service not in ("", SERVICE_NAME):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:64]!r}")
        serving = self.serving.not_ready_reason() is None and not self.drain.draining
        status = health_pb2.HealthCheckResponse.SERVING if serving \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


def server_options(settings: GrpcSettings) -> list[tuple[str, int]]:
    """Message limits both ways: a request over REST's body limit is refused by gRPC (RESOURCE_EXHAUSTED) before
    it is read into memory."""
    return [("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes)]


def method_handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The service's methods as the proto declares them, each with a :func:`lenient` deserializer (the generated
    ``add_GRPCInferenceServiceServicer_to_server`` would answer UNKNOWN for bytes that do not parse)."""
    methods = pb.DESCRIPTOR.services_by_name[SERVICE_NAME.rpartition(".")[2]].methods
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=lenient(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString)
        for method in methods})


@dataclass
class GrpcServer:
    """A started gRPC server: the port it listens on, and :meth:`stop`."""

    server: grpc.aio.Server
    port: int
    drain: Drain

    async def stop(self, grace: float | None) -> None:
        """Refuse new inference (UNAVAILABLE), wait up to ``grace`` seconds for the calls in progress, then stop
        gRPC itself within what is left of ``grace``."""
        self.drain.draining = True
        started = asyncio.get_running_loop().time()
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain.idle.wait(), grace)
        left = None if grace is None else max(0.0, grace - (asyncio.get_running_loop().time() - started))
        await self.server.stop(left)
        log.info("gRPC stopped (%d calls still in progress were ended)", self.drain.calls)


async def start_grpc_server(serving: Serving, settings: GrpcSettings) -> GrpcServer:
    """Start the gRPC server on the running event loop, on ``settings.port`` (0: any free port).

    Raises:
        RuntimeError: the port could not be bound.
    """
    drain = Drain()
    server = grpc.aio.server(options=server_options(settings))
    server.add_generic_rpc_handlers((method_handlers(InferenceServicer(serving, settings, drain)),))
    health_pb2_grpc.add_HealthServicer_to_server(ReadinessHealth(serving, drain), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s:%d", settings.host, port)
    return GrpcServer(server, port, drain)
