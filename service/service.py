"""The BentoML service: ``bentoml serve service.service:FashionClassifier``.

Endpoints (all POST, JSON answers, one answer per image in input order):

* ``/classify`` -- uploaded image(s), multipart ``images`` or one raw image body;
  ``?backend=`` picks the backend (default: the fastest).
* ``/classify_batch`` -- the same; kept as the name batch clients use.
* ``/classify_array`` -- ``N x 28 x 28`` uint8 pixels as JSON or a ``.npy`` body.
* ``/model_info`` -- per backend: loaded, device or providers in use, version,
  checksums, test accuracy.
* ``/ui/`` (GET) -- a web page to try the classifier and see the benchmark (service.web).
* ``/classify_dataset/submit`` (then ``progress``, ``status``, ``get``, ``cancel``) -- a
  whole dataset file as a BentoML task (service.task_routes, service.task_runner).
* ``/parity`` -- every loaded backend on the same images, compared (service.parity).
* ``/v2/...`` -- the Open Inference Protocol over REST (service.v2), and over gRPC on ``FASHION_GRPC_PORT``
  (service.grpc_server), both through the same batcher and limits.

Every classification goes through one batcher (service.batcher): requests that
arrive while the model is busy run together. ``/livez``, ``/readyz`` (ready once
every configured backend has loaded, passed its checksums and its warm-up),
``/metrics`` and the OpenAPI page come from BentoML; admission control
(service.admission) answers overload and "not ready" before any parsing.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from starlette.responses import JSONResponse, Response

from fashion.backends import MODEL_NAMES
from service import seams, telemetry
from service.answers import NPY, negotiate, records_response
from service.auth import KeyRing
from service.batcher import MicroBatcher, OverloadedError
from service.config import STOPPED_LINE, ServiceConfig
from service.datasets import Upload
from service.gcstats import GCRecorder, census, freeze_imports, settle_heap
from service.health import Heartbeat, start_health_server
from service.inputs import (
    ImageUpload,
    NoInput,
    ParityInput,
    PixelArray,
    RequestError,
)
from service.lifecycle import mirror
from service.parity import check_loaded_backends
from service.registry import ModelRegistry
from service.seams import JSONAnswer
from service.serving import InFlight, Serving
from service.task_board import TaskBoard
from service.task_routes import TASK_ROUTE
from service.task_runner import DatasetUpload, run_dataset_task
from service.v2 import app as v2_app
from service.web import build_web_app

log = logging.getLogger("bentoml.fashion_serve")

# Images per model call: large enough that a batch's model time stays small beside the HTTP work of the requests
# it serves (the in-process sweep of results/benchmark-amd-epyc-2c.md).
MAX_BATCH_IMAGES = 256
# A lone request of at most this many images runs on the event loop, not the model thread (service.batcher):
# its model call is shorter than the hop to the thread and back.
INLINE_MAX_IMAGES = 4
# BentoML's per-request timeout (traffic.timeout), which the gRPC calls keep too (service.grpc_server).
REQUEST_TIMEOUT_S = 30
# On SIGTERM, gRPC calls already accepted get up to this long to finish (as long as any may take); new ones are refused.
GRPC_GRACE_S = REQUEST_TIMEOUT_S


def refusal(ctx: bentoml.Context, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error answer from an endpoint that takes ``ctx`` (BentoML then sends ``ctx``'s status, not the
    response's, so both are set)."""
    ctx.response.status_code = status
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@bentoml.service(
    name="fashion-classifier",
    workers=1,
    # Models run on the batcher's one thread; BentoML's thread pool only serves /model_info.
    threads=1,
    # The in-flight limit is AdmissionMiddleware's (it sends Retry-After; BentoML's does not).
    # concurrency: the in-flight requests per replica that BentoML's autoscaler (BentoCloud) aims for. One image per
    # request, throughput stops growing at a few concurrent clients while p99 keeps rising (the HTTP rows of
    # results/benchmark-amd-epyc-2c.md); the batcher merges whatever is waiting, so more per replica only queues.
    traffic={"timeout": REQUEST_TIMEOUT_S, "concurrency": 16},
    # Measured on 2 cores (docs/serving.md): the access log and OpenTelemetry's per-request spans (no
    # exporter is configured, so they are built and dropped) each cost a large share of the
    # worker's CPU. Both can be turned back on with a BentoML configuration file.
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": [".*"]},
)
class FashionClassifier:
    """Classifies 28 x 28 clothing images with every exported backend."""

    torch_model = bentoml.models.BentoModel(f"{MODEL_NAMES['torch']}:latest")
    tf_model = bentoml.models.BentoModel(f"{MODEL_NAMES['tf']}:latest")

    def __init__(self) -> None:
        self.config = ServiceConfig.from_env()
        self.registry = ModelRegistry(self.config)
        in_flight = InFlight()
        self.batcher = MicroBatcher(self.registry.run_batch, MAX_BATCH_IMAGES, self.config.max_queued_images,
                                    self.config.batch_hold_file, self.config.queue_budget_s,
                                    alone=in_flight.alone, inline_images=INLINE_MAX_IMAGES)
        self.tasks = TaskBoard(self.config.tasks)
        # Handed to every request by admission control (service.serving): the parsers, v2 and the task routes.
        self.serving = Serving(self.config, self.registry, self.batcher, self.tasks, in_flight,
                               keys=KeyRing(self.config.api_keys) if self.config.api_keys else None,
                               **start_watchers(self.config))
        telemetry.install_log_filter()  # every log line of a request ends with its id
        model_dirs = {MODEL_NAMES["torch"]: Path(self.torch_model.path), MODEL_NAMES["tf"]: Path(self.tf_model.path)}
        self.gc = GCRecorder().install()
        self.heartbeat = Heartbeat(self.config.liveness_stale_s)
        if self.config.health_port:
            pages = {"/gcz": self.gc.snapshot, "/gcz/census": census, "/requestz": in_flight.totals}
            start_health_server(self.config.health_host, self.config.health_port, self.not_ready_reason, pages,
                                heartbeat=self.heartbeat)
        # Load in the background so /livez answers and /readyz says "not ready" meanwhile.
        # Once warm, and before the first request is let in, what is alive lives as long as the worker:
        # freeze it out of the collector's reach (service.gcstats).
        settle = functools.partial(settle_heap, self.gc, self.config.gc_freeze)
        if self.config.gc_freeze:
            freeze_imports()
        threading.Thread(target=self.registry.load_all, args=(model_dirs, settle), name="load-models",
                         daemon=True).start()

    @bentoml.on_startup
    async def start_heartbeat(self) -> None:
        """Liveness beats on the loop that answers requests (service.health)."""
        self.heartbeat.start()

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """The Open Inference Protocol over gRPC on ``FASHION_GRPC_PORT``, on this worker's loop, sharing its parts
        (service.grpc_server); off when the port is 0."""
        self.grpc_server = None
        if self.config.grpc_port:
            from service.grpc_server import GrpcSettings, start_grpc_server

            settings = GrpcSettings(self.config.grpc_host, self.config.grpc_port, self.config.max_body_bytes,
                                    timeout_s=REQUEST_TIMEOUT_S)
            self.grpc_server = await start_grpc_server(self.serving, settings)

    @bentoml.on_shutdown
    async def drain_grpc(self) -> None:
        """Refuse new gRPC inference (UNAVAILABLE, retryable) and finish the calls accepted, within the grace period
        (service.grpc_server.GrpcServer.stop). BentoML runs this once uvicorn has drained HTTP, and runs the shutdown
        hooks in name order, so this one ends before ``report_requests`` counts what was answered."""
        server = getattr(self, "grpc_server", None)  # None: off, or the start-up hook never ran
        if server is not None:
            await server.stop(GRPC_GRACE_S)

    @bentoml.on_shutdown
    def stop_watchers(self) -> None:
        """Write what the prediction log has queued and export the buffered spans (both off by default)."""
        for watcher in (self.serving.drift, self.serving.predictions, self.serving.tracer):
            if watcher is not None:
                watcher.close()

    @bentoml.on_shutdown
    def report_requests(self) -> None:
        """Log whether every request let in was answered. BentoML calls this once uvicorn has finished the
        requests in progress, after ``SIGTERM``. A client whose connection was closed sees only an error, and
        cannot tell a request the server dropped from one it never read (a keep-alive connection closed as
        idle while the client's next request was on its way); this line can
        (benchmark.reliability.scenarios.shutdown)."""
        log.info(STOPPED_LINE, *self.serving.in_flight.totals().values())

    def __is_ready__(self) -> bool:
        return self.registry.ready

    def not_ready_reason(self) -> str | None:
        """``None`` once ready; else why not (loading, or the error that stopped loading)."""
        return self.serving.not_ready_reason()

    async def classify_pixels(self, backend: str, pixels: np.ndarray, ctx: bentoml.Context, top_k: int | None = None,
                              return_input: bool = False) -> list[dict[str, Any]] | Response:
        """Answers from the batcher (with the input pixels if asked), as JSON or compact rows as ``Accept`` asks
        (service.answers; 406 before any model runs when neither is acceptable), or 503 with ``Retry-After``
        when the batcher's queue is full."""
        decoded = time.perf_counter()  # the end of the request's decode stage (service.telemetry)
        try:
            answer = negotiate(ctx.request.headers.get("accept"))
            if answer == NPY and return_input:
                raise RequestError(f"return_input needs a JSON answer; the {NPY} rows hold no pixels", 400)
        except RequestError as exc:
            return refusal(ctx, exc.error_code.value, str(exc))
        try:
            outputs = await self.batcher.predict(backend, pixels, score=answer != NPY)
        except OverloadedError as exc:
            telemetry.refused(exc.reason)
            return refusal(ctx, 503, str(exc), {"Retry-After": "1"})
        loaded = self.registry.get(backend)
        self.serving.answered(loaded, decoded, pixels, outputs)
        mirror(self.registry, self.batcher, backend, pixels, outputs.logits)  # shadow traffic (service.shadow)
        if answer == NPY:
            return records_response(outputs.logits, loaded.name, loaded.manifest["version"],
                                    temperature=loaded.temperature)
        return self.registry.describe(backend, outputs.logits, top_k, pixels if return_input else None,
                                      outputs.scores, outputs.probabilities)

    @bentoml.api(route="/classify", input_spec=ImageUpload, output_spec=JSONAnswer)
    async def classify(self, images: np.ndarray, backend: str, ctx: bentoml.Context, top_k: int | None = None,
                       return_input: bool = False, framing: str | None = None) -> list[dict[str, Any]]:
        """Classify uploaded image(s); requests arriving together are batched per backend. ``framing`` was
        applied while decoding (service.inputs); each answer says whether the image looks like clothing.

        Try it in a browser: [/ui/](/ui/). `Accept: application/x-npy` answers compact rows instead of JSON.
        """
        return await self.classify_pixels(backend, images, ctx, top_k, return_input)

    @bentoml.api(route="/classify_batch", input_spec=ImageUpload, output_spec=JSONAnswer)
    async def classify_batch(self, images: np.ndarray, backend: str, ctx: bentoml.Context, top_k: int | None = None,
                             return_input: bool = False, framing: str | None = None) -> list[dict[str, Any]]:
        """Classify many uploaded images in one call (the same as /classify); answers in input order.

        `Accept: application/x-npy` answers compact rows instead of JSON.
        """
        return await self.classify_pixels(backend, images, ctx, top_k, return_input)

    @bentoml.api(route="/classify_array", input_spec=PixelArray, output_spec=JSONAnswer)
    async def classify_array(self, pixels: np.ndarray, backend: str, ctx: bentoml.Context) -> list[dict[str, Any]]:
        """Classify N x 28 x 28 uint8 pixels (JSON or .npy); answers in input order.

        `Accept: application/x-npy` answers compact rows (class id, confidence, probabilities) instead of JSON.
        """
        return await self.classify_pixels(backend, pixels, ctx)

    @bentoml.task(route=TASK_ROUTE, input_spec=DatasetUpload, output_spec=JSONAnswer)
    async def classify_dataset(self, images: Upload, ctx: bentoml.Context, labels: Path | None = None,
                               backend: str | None = None) -> dict[str, Any] | Response:
        """A dataset file as a task: POST /classify_dataset/submit; then progress, status, get (service.task_routes).

        ``labels`` and ``backend`` are in the schema for clients; the task reads them from ``images`` (the upload).
        """
        return await run_dataset_task(self.tasks, self.batcher, self.registry, ctx, images)

    @bentoml.api(route="/parity", input_spec=ParityInput, output_spec=JSONAnswer)
    async def parity(self, pixels: np.ndarray | None) -> dict[str, Any] | JSONResponse:
        """Every loaded backend on the same images (no body: the bundled samples), compared pair by pair."""
        return await check_loaded_backends(self.batcher, self.registry, pixels)

    @bentoml.api(route="/model_info", input_spec=NoInput, output_spec=JSONAnswer)
    def model_info(self) -> dict[str, Any]:
        """Which backends are loaded, on which device, with which model version and accuracy."""
        return self.registry.info()


def start_watchers(config: ServiceConfig) -> dict[str, Any]:
    """The drift gauges, prediction log and tracer that ``config`` turns on (docs/observability.md), started."""
    from service.drift import DriftMonitor

    watchers: dict[str, Any] = {}
    if config.drift_window:
        watchers["drift"] = DriftMonitor(config.drift_window, config.drift_interval_s).start()
    if config.prediction_log is not None:
        from service.predictions import PredictionLog

        watchers["predictions"] = PredictionLog(config.prediction_log)
    if config.otlp_endpoint:
        from service.tracing import otlp_tracer

        watchers["tracer"] = otlp_tracer(config.otlp_endpoint)
    return watchers


def current_serving() -> Serving | None:
    """The running worker's :class:`Serving`; ``None`` before BentoML has created the service.

    The one lookup of BentoML's current instance: BentoML builds the middleware and mounted apps below before it
    creates the instance, so they are handed this function, and admission puts what it returns on each request.
    """
    try:
        return getattr(bentoml.get_current_service(), "serving", None)
    except BentoMLException:  # "service isn't instantiated yet"
        return None


# Every seam in BentoML and uvicorn (the deadline, the event loop, admission, the task routes, v2, the web page),
# installed once, here, where the service is built (service.seams).
seams.install(FashionClassifier, current_serving, v2_app, build_web_app(), os.environ.get("FASHION_EVENT_LOOP"))
