"""Every place the service bends BentoML's or uvicorn's internals, installed by one call: :func:`install`.

bentofile.yaml pins BentoML exactly, and tests/unit/test_bentoml_seam.py pins each seam below against that
version, so an upgrade has one module to read and one test file to run. The seams:

1. **The per-request deadline.** BentoML 1.4's ``TimeoutMiddleware`` (``bentoml._internal.server.http.traffic``)
   schedules a timer per request that outlives it for ``traffic.timeout`` seconds; under load those timers and
   what they hold reach the collector's oldest generation and make every full pass longer (docs/history.md).
   :class:`DeadlineMiddleware` keeps BentoML's behaviour -- a ``504`` when no response has started within the
   timeout -- with ``asyncio.timeout`` in the request's own task, disarmed when the response starts.
   :func:`use_deadline_middleware` makes BentoML build it in place of its own, so ``traffic.timeout`` keeps
   configuring it.
2. **The event loop.** With uvloop (uvicorn's ``auto`` choice) a listening socket accepts one connection per turn
   of the loop, so a flood's connections wait in the kernel where admission control cannot answer them;
   asyncio's loop accepts up to the backlog per turn (docs/serving.md, "Event loop").
   :func:`choose_event_loop` points uvicorn's ``auto`` at the chosen loop before BentoML builds uvicorn's config.
3. **The task routes.** ``@bentoml.task`` serves ``submit``, ``status``, ``get``, ``retry`` and ``cancel``;
   service.task_routes.TaskMiddleware answers some of them itself (limits, progress, a cancel that cancels).
4. **The inference lane.** :class:`InferenceLane` hands a v2 inference request straight to the v2 inference
   endpoint, a plain ASGI app, right behind admission control, and other ``/v2`` requests to the v2 app: BentoML's
   tracing layer, router and context middleware, which the v2 routes never use, are skipped; the mount at ``/``
   stays for everything else.
5. **The JSON answer.** :class:`JSONAnswer` subclasses BentoML's private ``IORootModel`` to fix its media type:
   BentoML would otherwise build the answer's JSON schema on every response.
6. **The key gate first.** BentoML puts the service's own middleware inside its traffic metrics, tracing and
   timeout layers. :func:`put_first` moves service.admission.KeyGate in front of them, so a request with a wrong
   key, or one over its key's rate, costs the server only the gate: one key's flood takes little from the others
   (SECURITY.md). BentoML's request metrics then never count those refusals. :func:`put_first` also sets the order
   the inference lane needs: BentoML's metrics, the deadline, admission, the lane, then BentoML's tracing layer.
7. **Request telemetry outermost.** service.telemetry.RequestTelemetry goes in front of the key gate, so every
   answer, a refused key's included, carries the request id and is counted (docs/observability.md).
8. **BentoML's request metrics, looked up once.** :class:`TrafficMetrics` counts the same series as BentoML's
   ``RunnerTrafficMetricsMiddleware``, which looks up each labelled child by keyword on every request;
   :func:`use_lean_traffic_metrics` makes BentoML build it in its place.

Admission control (service.admission) and the web page (service.web) use BentoML's public API only; they are
added here so that the order of everything in front of BentoML's router is written in one place.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from typing import Any

# The one private BentoML module imported (not re-exported by bentoml); see JSONAnswer.
from _bentoml_sdk.io_models import IORootModel

from service.admission import AdmissionMiddleware, KeyGate
from service.asgi_types import ASGIApp, Message, Receive, Scope, Send
from service.serving import Serving
from service.task_routes import TaskMiddleware
from service.telemetry import RequestTelemetry
from service.v2 import infer as v2_infer
from service.v2 import infer_params

DEFAULT_LOOP = "asyncio"
# Labelled children TrafficMetrics keeps per kind: BentoML's routes and ours are far fewer; past this, a path's
# children are looked up on each request, as BentoML does.
MAX_CACHED_SERIES = 256
LOOPS = {"asyncio": "uvicorn.loops.asyncio:asyncio_loop_factory", "uvloop": "uvicorn.loops.uvloop:uvloop_loop_factory"}


def install(service: Any, current: Callable[[], Serving | None], v2_app: ASGIApp, web_app: ASGIApp,
            event_loop: str | None = None) -> None:
    """Install every seam on ``service`` (a ``bentoml.Service``), before BentoML builds the worker's app.

    Args:
        service: the service class BentoML serves.
        current: the running worker's :class:`Serving` (``None`` before BentoML has created the service), which
            admission control puts on each request.
        v2_app: the Open Inference Protocol app (service.v2), mounted at ``/`` and reached through
            :class:`InferenceLane`, which hands inference to service.v2.infer itself.
        web_app: the web page's app (service.web), mounted at ``/ui``.
        event_loop: ``asyncio`` (``None``: the default), ``uvloop`` or ``auto`` (:func:`choose_event_loop`).

    Raises:
        RuntimeError: this BentoML has no ``TimeoutMiddleware`` or ``RunnerTrafficMetricsMiddleware`` to replace
            (an upgrade moved it).
        ValueError: an unknown event loop.
    """
    if not use_deadline_middleware():
        raise RuntimeError("BentoML's TimeoutMiddleware was not found: check service.seams against this BentoML")
    if not use_lean_traffic_metrics():
        raise RuntimeError("BentoML's RunnerTrafficMetricsMiddleware was not found: check service.seams against "
                           "this BentoML")
    choose_event_loop(event_loop)
    service.mount_asgi_app(v2_app, path="/", name="v2")
    service.add_asgi_middleware(RequestTelemetry)
    service.add_asgi_middleware(KeyGate, current=current)
    service.add_asgi_middleware(AdmissionMiddleware, current=current)
    service.add_asgi_middleware(InferenceLane, v2=v2_app, infer=v2_infer)
    service.add_asgi_middleware(TaskMiddleware, current=current)
    # Outermost first: request telemetry, the key gate, BentoML's request metrics, the deadline, admission and the
    # inference lane; then BentoML's tracing layer, the task routes and BentoML's router, which inference skips.
    put_first(*FRONT)
    service.mount_asgi_app(web_app, path="/ui", name="web")


def put_first(*middleware: type) -> None:
    """Make ``middleware`` (added with ``add_asgi_middleware``) the outermost of the layers BentoML builds, in the
    order given.

    BentoML 1.4's ``Service.to_asgi`` lists the app's layers (Starlette's ``user_middleware``) as its traffic
    metrics, tracing and timeout, then the service's own; Starlette turns the list into the stack on the first
    request, so reordering the built app's list is enough. Wrapping ``to_asgi`` imports nothing: the module that
    builds the app is heavy and only a worker needs it, not the ``bentoml serve`` process that starts one.
    Installing twice changes nothing.
    """
    from _bentoml_sdk.service.factory import Service

    build = Service.to_asgi
    if getattr(build, "first", None) == middleware:
        return
    build = getattr(build, "unwrapped", build)
    rank = {cls: i for i, cls in enumerate(middleware)}

    @functools.wraps(build)
    def to_asgi(service: Any, *args: Any, **kwargs: Any) -> Any:
        app = build(service, *args, **kwargs)
        if app.middleware_stack is not None:
            raise RuntimeError("BentoML built the app's middleware stack early: check service.seams.put_first")
        app.user_middleware.sort(key=lambda layer: rank.get(layer.cls, len(rank)))  # stable: the rest keep their order
        return app

    to_asgi.first = middleware
    to_asgi.unwrapped = build
    Service.to_asgi = to_asgi


class DeadlineMiddleware:
    """ASGI middleware: ``504`` if the response has not started within ``timeout`` seconds."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        started = False
        deadline = asyncio.timeout(self.timeout)

        async def send_and_disarm(message: Message) -> None:
            nonlocal started
            if not started:
                started = True
                deadline.reschedule(None)  # BentoML's limit covers the wait for the first byte only
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, send_and_disarm)
        except TimeoutError:
            if started or not deadline.expired() or scope["type"] != "http":
                raise
            await self.answer_timeout(send)

    async def answer_timeout(self, send: Send) -> None:
        """The ``504`` BentoML's middleware sends, with the same message."""
        body = json.dumps({"error": f"Not able to process the request in {self.timeout} seconds"}).encode()
        await send({"type": "http.response.start", "status": 504, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def use_deadline_middleware() -> bool:
    """Make BentoML use :class:`DeadlineMiddleware` where it would build its ``TimeoutMiddleware``.

    BentoML imports the class from its module each time it builds a worker's app, so replacing the module
    attribute before the app is built is enough. Returns False (and changes nothing) if this BentoML has no such
    class.
    """
    try:
        from bentoml._internal.server.http import traffic
    except ImportError:
        return False
    if not hasattr(traffic, "TimeoutMiddleware"):
        return False
    traffic.TimeoutMiddleware = DeadlineMiddleware
    return True


def choose_event_loop(choice: str | None = None) -> str:
    """Make uvicorn's ``loop="auto"`` (which BentoML's worker uses) mean ``choice`` (default: DEFAULT_LOOP).

    ``auto`` leaves uvicorn's own choice (uvloop when installed) in place. Returns the choice.

    Raises:
        ValueError: an unknown loop name.
    """
    choice = choice or DEFAULT_LOOP
    if choice != "auto" and choice not in LOOPS:
        raise ValueError(f"FASHION_EVENT_LOOP must be one of {['auto', *sorted(LOOPS)]}, not {choice!r}")
    if choice == "auto":
        return choice
    from uvicorn import config

    config.LOOP_FACTORIES["auto"] = LOOPS[choice]
    return choice


class InferenceLane:
    """ASGI middleware: the inference lane. v2 inference requests go straight to the v2 inference endpoint, other
    ``/v2`` requests to the v2 app, the rest on to BentoML's app.

    :func:`install` puts it right behind admission control, so an inference request passes the request telemetry,
    the key gate, BentoML's request metrics, the deadline and admission, and nothing else: not BentoML's tracing
    layer (off for every URL, service.tracing), the task routes, BentoML's router and context, nor the v2 app's own
    router (docs/serving.md, "The inference lane").
    """

    def __init__(self, app: ASGIApp, v2: ASGIApp, infer: ASGIApp) -> None:
        """
        Args:
            app: BentoML's app, which BentoML passes to every middleware it adds.
            v2: the v2 app (service.v2.app); :func:`install` passes it and ``infer`` as options of
                ``add_asgi_middleware``.
            infer: the v2 inference endpoint (service.v2.infer), a plain ASGI app.
        """
        self.app = app
        self.v2 = v2
        self.infer = infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/v2" or path.startswith("/v2/"):
            params = infer_params(path) if scope["method"] == "POST" else None
            if params is None:
                return await self.v2(scope, receive, send)
            scope["path_params"] = params
            return await self.infer(scope, receive, send)
        await self.app(scope, receive, send)


class TrafficMetrics:
    """BentoML's request metrics (``request_total``, ``request_duration_seconds``, ``request_in_progress``,
    ``last_request_timestamp_seconds``): the same series, each labelled child looked up once.

    BentoML's ``RunnerTrafficMetricsMiddleware`` looks up every child by keyword labels on every request, and wraps
    ``receive`` for websocket counts; :func:`use_lean_traffic_metrics` makes BentoML build this in its place. HTTP
    requests are counted here; websockets and ``/metrics`` go to BentoML's own middleware, which also registers the
    series (a second registration would fail).
    """

    bentoml_class: Any = None  # BentoML's middleware, set by use_lean_traffic_metrics

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.bentoml = self.bentoml_class(app, **options)
        self.skip_paths = tuple(self.bentoml.skip_paths)
        self.children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.in_progress: dict[str, Any] = {}
        self.last_request: Any = None

    def labels(self) -> dict[str, str]:
        from bentoml._internal.context import server_context

        return {"service_name": server_context.bento_name, "service_version": server_context.bento_version,
                "runner_name": server_context.service_name}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            return await self.bentoml(scope, receive, send)
        if not self.bentoml._is_setup:
            self.bentoml._setup()
        endpoint = scope["path"]
        if not endpoint.startswith(self.skip_paths):
            if self.last_request is None:
                self.last_request = self.bentoml.metrics_last_request_timestamp.labels(**self.labels())
            self.last_request.set_to_current_time()
        start = time.perf_counter()
        status = 0

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                total, duration = self.series(endpoint, status)
                total.inc()
                duration.observe(max(time.perf_counter() - start, 0.0))
            await send(message)

        with self.progress(endpoint).track_inprogress():
            await self.app(scope, receive, counted_send)

    def series(self, endpoint: str, status: int) -> tuple[Any, Any]:
        """The request count and duration children of ``endpoint`` and ``status``, cached unless the path was not
        found (a client can make up any number of those) and up to :data:`MAX_CACHED_SERIES` pairs."""
        found = self.children.get((endpoint, status))
        if found is None:
            labels = {"endpoint": endpoint, "http_response_code": status, **self.labels()}
            found = (self.bentoml.metrics_request_total.labels(**labels),
                     self.bentoml.metrics_request_duration.labels(**labels))
            if status != 404 and len(self.children) < MAX_CACHED_SERIES:
                self.children[(endpoint, status)] = found
        return found

    def progress(self, endpoint: str) -> Any:
        """The in-progress gauge child of ``endpoint``, cached for up to :data:`MAX_CACHED_SERIES` paths."""
        found = self.in_progress.get(endpoint)
        if found is None:
            found = self.bentoml.metrics_request_in_progress.labels(endpoint=endpoint, **self.labels())
            if len(self.in_progress) < MAX_CACHED_SERIES:
                self.in_progress[endpoint] = found
        return found


def use_lean_traffic_metrics() -> bool:
    """Make BentoML build :class:`TrafficMetrics` where it would build its ``RunnerTrafficMetricsMiddleware``.

    BentoML imports the class from its module each time it builds a worker's app. Returns False (and changes
    nothing) if this BentoML has no such class.
    """
    try:
        from bentoml._internal.server.http import instruments
    except ImportError:
        return False
    if not hasattr(instruments, "RunnerTrafficMetricsMiddleware") or not hasattr(instruments, "server_context"):
        return False
    if instruments.RunnerTrafficMetricsMiddleware is not TrafficMetrics:
        TrafficMetrics.bentoml_class = instruments.RunnerTrafficMetricsMiddleware
        instruments.RunnerTrafficMetricsMiddleware = TrafficMetrics
    return True


# The layers in front of every other, outermost first (service.seams.install).
FRONT = (RequestTelemetry, KeyGate, TrafficMetrics, DeadlineMiddleware, AdmissionMiddleware, InferenceLane)


class JSONAnswer(IORootModel[Any]):
    """A JSON answer, the output spec of every endpoint.

    BentoML derives a root model's media type by building its JSON schema on every response; the answer is
    always JSON, so say so once.
    """

    media_type = "application/json"
