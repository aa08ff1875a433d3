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
4. **The v2 shortcut.** :class:`V2Shortcut` hands ``/v2`` requests to the v2 app before BentoML's router and
   context middleware, which the v2 app never uses; the mount at ``/`` stays for everything else.
5. **The JSON answer.** :class:`JSONAnswer` subclasses BentoML's private ``IORootModel`` to fix its media type:
   BentoML would otherwise build the answer's JSON schema on every response.
6. **The key gate first.** BentoML puts the service's own middleware inside its traffic metrics, tracing and
   timeout layers. :func:`put_first` moves service.admission.KeyGate in front of them, so a request with a wrong
   key, or one over its key's rate, costs the server only the gate: one key's flood takes little from the others
   (SECURITY.md). BentoML's request metrics then never count those refusals.
7. **Request telemetry outermost.** service.telemetry.RequestTelemetry goes in front of the key gate, so every
   answer, a refused key's included, carries the request id and is counted (docs/observability.md).

Admission control (service.admission) and the web page (service.web) use BentoML's public API only; they are
added here so that the order of everything in front of BentoML's router is written in one place.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

# The one private BentoML module imported (not re-exported by bentoml); see JSONAnswer.
from _bentoml_sdk.io_models import IORootModel

from service.admission import AdmissionMiddleware, KeyGate
from service.serving import Serving
from service.task_routes import TaskMiddleware
from service.telemetry import RequestTelemetry

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_LOOP = "asyncio"
LOOPS = {"asyncio": "uvicorn.loops.asyncio:asyncio_loop_factory", "uvloop": "uvicorn.loops.uvloop:uvloop_loop_factory"}


def install(service: Any, current: Callable[[], Serving | None], v2_app: ASGIApp, web_app: ASGIApp,
            event_loop: str | None = None) -> None:
    """Install every seam on ``service`` (a ``bentoml.Service``), before BentoML builds the worker's app.

    Args:
        service: the service class BentoML serves.
        current: the running worker's :class:`Serving` (``None`` before BentoML has created the service), which
            admission control puts on each request.
        v2_app: the Open Inference Protocol app (service.v2), mounted at ``/`` and reached through
            :class:`V2Shortcut`.
        web_app: the web page's app (service.web), mounted at ``/ui``.
        event_loop: ``asyncio`` (``None``: the default), ``uvloop`` or ``auto`` (:func:`choose_event_loop`).

    Raises:
        RuntimeError: this BentoML has no ``TimeoutMiddleware`` to replace (an upgrade moved it).
        ValueError: an unknown event loop.
    """
    if not use_deadline_middleware():
        raise RuntimeError("BentoML's TimeoutMiddleware was not found: check service.seams against this BentoML")
    choose_event_loop(event_loop)
    service.mount_asgi_app(v2_app, path="/", name="v2")
    # Request telemetry, then the key gate, in front of every layer (put_first); then, outermost first, all inside
    # BentoML's metrics and the deadline: admission, the task routes, v2.
    service.add_asgi_middleware(RequestTelemetry)
    service.add_asgi_middleware(KeyGate, current=current)
    put_first(RequestTelemetry, KeyGate)
    service.add_asgi_middleware(AdmissionMiddleware, current=current)
    service.add_asgi_middleware(TaskMiddleware, current=current)
    service.add_asgi_middleware(V2Shortcut, v2=v2_app)
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


class V2Shortcut:
    """ASGI middleware that hands ``/v2`` requests straight to the v2 app.

    Mounted at "/", the v2 app was reached only after BentoML's router had tried each of its other routes and its
    context middleware had built a request object the v2 app never reads (docs/kserve-v2.md). :func:`install`
    adds this inside admission control, the deadline and BentoML's metrics, which all still apply; every other
    path goes on to BentoML's app, and the mount stays for them.
    """

    def __init__(self, app: ASGIApp, v2: ASGIApp) -> None:
        """
        Args:
            app: BentoML's app, which BentoML passes to every middleware it adds.
            v2: the v2 app, which :func:`install` passes as an option of ``add_asgi_middleware``.
        """
        self.app = app
        self.v2 = v2

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        target = self.v2 if path == "/v2" or path.startswith("/v2/") else self.app
        await target(scope, receive, send)


class JSONAnswer(IORootModel[Any]):
    """A JSON answer, the output spec of every endpoint.

    BentoML derives a root model's media type by building its JSON schema on every response; the answer is
    always JSON, so say so once.
    """

    media_type = "application/json"
