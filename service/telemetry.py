"""What each request did: its id, the time each stage took, and why it was refused (docs/observability.md).

:class:`RequestTelemetry` is the outermost layer of the app (service.seams). For every HTTP request it

* takes the request id from ``X-Request-ID``, else the trace id of a W3C ``traceparent``, else makes one, and
  sends it back in the ``X-Request-ID`` header and in every JSON error body (``request_id``);
* keeps a :class:`RequestContext` in a context variable, so every log line written while the request is served
  carries the id (:class:`RequestIdFilter`) and the endpoints can note what they did (:func:`answered`);
* when the last byte is sent, observes the stages of an answered request in ``fashion_request_stage_seconds``
  (``decode``, ``queue``, ``model``, ``encode``, per backend and version) and counts a refusal in
  ``fashion_requests_refused_total`` (per status and reason).

The stages split the request's time as a client sees it: ``decode`` from the request's arrival to the endpoint
(reading and decoding the body), ``queue`` the wait for the model call and ``model`` the call (both measured by
service.batcher), ``encode`` from the answer reaching the request to its last byte sent. What falls between them
(the hop from the model thread back to the event loop) is counted in none, so their sum is a little under the
request's duration (tests/integration/test_telemetry_asgi.py checks it against BentoML's own histogram).
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from service.asgi_types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
# An id sent in is echoed into headers, JSON and log lines: only short tokens of safe characters are taken (no
# spaces, quotes or line breaks that could forge a log line); anything else is replaced by a new id.
VALID_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
# https://www.w3.org/TR/trace-context/#traceparent-header: version 00, a trace id and a parent id, neither all zero.
TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
STAGES = ("decode", "queue", "model", "encode")
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# The reason a refusal is counted under when the code that refused named none.
STATUS_REASONS = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "bad_method",
                  406: "not_acceptable", 408: "timeout", 409: "conflict", 410: "gone", 411: "length_required",
                  413: "too_large", 415: "unsupported_media_type", 422: "unprocessable", 429: "too_many_requests",
                  500: "error", 503: "unavailable", 504: "timeout"}

CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("fashion_request", default=None)


@dataclass(slots=True)
class RequestContext:
    """One request as it is served: its id, and what the endpoint noted (perf_counter seconds)."""

    id: str
    started: float
    # The caller's W3C traceparent header, when it sent a valid one (tracing joins its trace, service.tracing).
    traceparent: bytes | None = None
    decoded: float = 0.0  # the input was read and decoded, the endpoint began
    answered: float = 0.0  # the model's answer reached the request
    queue_s: float = 0.0
    compute_s: float = 0.0
    backend: str = ""  # set once a model answered: the request's stages are then observed
    version: str = ""
    reason: str = ""  # why the request was refused, when the code that refused said
    tracer: Any = None  # the service's service.tracing.Tracer, when it traces: the answered stages become spans


def make_id() -> str:
    """A new request id: 128 random bits as 32 hex digits (the size of a W3C trace id)."""
    return os.urandom(16).hex()


def id_or_new(sent: str) -> str:
    """An id a client sent (a gRPC call's ``id``) when it is a safe one (:data:`VALID_ID`), else a new one."""
    return sent if sent and VALID_ID.fullmatch(sent.encode()) else make_id()


def read_ids(headers: list[tuple[bytes, bytes]]) -> tuple[str, bytes | None]:
    """The request id (``X-Request-ID``, else ``traceparent``'s trace id, else a new one) and a valid
    ``traceparent``, from an ASGI scope's headers."""
    sent = parent = None
    for name, value in headers:
        if name == HEADER and VALID_ID.fullmatch(value):
            sent = value.decode()
        elif name == b"traceparent":
            match = TRACEPARENT.fullmatch(value.strip().lower())
            if match and match[1] != b"0" * 32 and match[2] != b"0" * 16:
                parent = value.strip().lower()
    if sent is None and parent is not None:
        sent = parent[3:35].decode()
    return sent or make_id(), parent


def current() -> RequestContext | None:
    """The request being served in this context, ``None`` outside one."""
    return CURRENT.get()


def answered(backend: str, version: str, decoded: float, queue_s: float, compute_s: float,
             tracer: Any = None) -> None:
    """Note, for the current request, that ``backend``'s ``version`` answered it: its input was decoded at
    ``decoded`` (perf_counter), it waited ``queue_s`` for a model call of ``compute_s`` (service.batcher), and the
    answer reached it now; ``tracer`` (service.tracing.Tracer, ``None``: off) gets its spans once it is sent."""
    ctx = CURRENT.get()
    if ctx is not None:
        ctx.tracer = tracer
        ctx.answered = time.perf_counter()
        ctx.decoded, ctx.queue_s, ctx.compute_s = decoded, queue_s, compute_s
        ctx.backend, ctx.version = backend, version


def refused(reason: str) -> None:
    """Name why the current request is being refused (counted when its answer is sent)."""
    ctx = CURRENT.get()
    if ctx is not None:
        ctx.reason = reason


@functools.cache
def metrics() -> dict[str, Any]:
    """Prometheus series for requests, created once per process (BentoML serves them on /metrics)."""
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "stage": Histogram("fashion_request_stage_seconds", "Seconds an answered request spent in each stage "
                           "(decode, queue, model, encode); their sum is the request's time", ("stage", "backend",
                                                                                                 "version"),
                           buckets=STAGE_BUCKETS),
        "refused": Counter("fashion_requests_refused", "Requests answered with an error status, by status and "
                           "reason", ("status", "reason")),
        "in_flight": Gauge("fashion_requests_in_flight", "HTTP requests being served", multiprocess_mode="livesum"),
    }


@functools.cache
def stage_series(backend: str, version: str) -> tuple[Any, ...]:
    """The four stage histograms of one backend version (the labelled children, looked up once)."""
    stage = metrics()["stage"]
    return tuple(stage.labels(name, backend, version) for name in STAGES)


def observe(ctx: RequestContext, status: int, ended: float) -> None:
    """Count the finished request: its stages when a model answered it, its refusal when it was one."""
    if ctx.backend:
        decode, queue, model, encode = stage_series(ctx.backend, ctx.version)
        decode.observe(max(ctx.decoded - ctx.started, 0.0))
        queue.observe(ctx.queue_s)
        model.observe(ctx.compute_s)
        encode.observe(max(ended - ctx.answered, 0.0))
    if status >= 400:
        metrics()["refused"].labels(str(status), ctx.reason or STATUS_REASONS.get(status, "other")).inc()


def with_request_id(body: bytes, request_id: str) -> bytes | None:
    """A JSON error body with ``request_id`` added (to each object of a list); ``None`` when it is not JSON."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, dict):
        value["request_id"] = request_id
    elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
        for item in value:
            item["request_id"] = request_id
    else:
        return None
    return json.dumps(value).encode()


class RequestTelemetry:
    """ASGI middleware: the request id, the per-stage histograms and the refusal counts (module docstring).

    service.seams makes it the outermost layer, so that refusals by every layer behind it are counted and carry
    the id. When the service traces (service.tracing), the endpoint hands the tracer over with the answer
    (:func:`answered`) and the request's stages are exported as spans; tracing off, that is one test per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id, parent = read_ids(scope["headers"])
        ctx = RequestContext(request_id, time.perf_counter(), parent)
        token = CURRENT.set(ctx)
        series = metrics()
        series["in_flight"].inc()
        status = 0
        held: Message | None = None  # an error's start, held until its body has the id in it
        chunks: list[bytes] = []

        async def send_with_id(message: Message) -> None:
            nonlocal status, held
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (HEADER, request_id.encode())]}
                if status >= 400 and is_json(message["headers"]):
                    held = message
                    return
                return await send(message)
            if message["type"] != "http.response.body":
                return await send(message)
            last = not message.get("more_body")
            # The request's end is when its last byte is handed to the server (where BentoML's duration ends too).
            ended = time.perf_counter() if last else 0.0
            if held is not None:
                chunks.append(message.get("body", b""))
                if not last:
                    return
                await send_error(send, held, b"".join(chunks), request_id)
            else:
                await send(message)
            if last:
                observe(ctx, status, ended)
                if ctx.tracer is not None:
                    ctx.tracer.export(ctx, status, ended)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            series["in_flight"].dec()
            CURRENT.reset(token)


def is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"application/json") for name, value in headers)


async def send_error(send: Send, start: Message, body: bytes, request_id: str) -> None:
    """Send a held JSON error with ``request_id`` in its body (the body as it was when it is not JSON)."""
    rewritten = with_request_id(body, request_id)
    if rewritten is not None:
        body = rewritten
        start = {**start, "headers": [(name, value) for name, value in start["headers"]
                                      if name.lower() != b"content-length"]
                 + [(b"content-length", str(len(body)).encode())]}
    await send(start)
    await send({"type": "http.response.body", "body": body})


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (``-`` outside a request), and ends the message of a record written
    while a request is served with ``[request_id=...]``, whatever the handler's format."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = CURRENT.get()
        record.request_id = ctx.id if ctx is not None else "-"
        if ctx is not None and not getattr(record, "fashion_request_id", False):
            record.msg = f"{record.getMessage()} [request_id={ctx.id}]"
            record.args = None
            record.fashion_request_id = True  # a record reaching a second handler is not tagged twice
        return True


def install_log_filter(loggers: tuple[str, ...] = ("", "bentoml")) -> RequestIdFilter:
    """Put one :class:`RequestIdFilter` on every handler of ``loggers`` (the root and BentoML's, which the worker's
    logging configuration set up); installing twice changes nothing."""
    found = RequestIdFilter()
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            existing = next((f for f in handler.filters if isinstance(f, RequestIdFilter)), None)
            if existing is None:
                handler.addFilter(found)
    return found
