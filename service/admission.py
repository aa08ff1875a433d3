"""Admission control in front of the API routes: what an overloaded or starting server answers.

* More than ``max_in_flight`` requests in progress: ``429`` at once, with ``Retry-After``
  (BentoML's own ``max_concurrency`` limit answers 429 without it, so it is turned off).
* Models not loaded yet, or failed to load: ``503`` for model work (POST routes but ``/model_info``),
  with the reason and ``Retry-After``
  (BentoML hides the message of any 5xx it builds from an exception).
* Every other 429 or 503 that passes through gets ``Retry-After`` too.

Health, readiness and metrics routes (the v2 protocol's too) are never refused, so probes answer
during a flood; the OpenAPI page and v2 server metadata answer while the models load.

With API keys configured (service.auth), :class:`KeyGate` checks every request's key, scope and key's rate
(401, 403, 429 with ``Retry-After``) before anything else runs, BentoML's own layers included (service.service
puts it first): a refused key then costs the server as little as an answer can, so a flooding key takes little
from the others. The probes stay open. Without keys the gate is one attribute test.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from service import telemetry
from service.asgi_types import ASGIApp, Message, Receive, Scope, Send
from service.serving import InFlight, Serving, attach, serving_of

EXEMPT_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/v2/health/live", "/v2/health/ready"})
# Only work that needs the models waits for readiness: POST routes (inference, tasks), except the
# info route that says why the models are not ready. Pages, metadata and health checks are GETs.
ANSWERS_BEFORE_READY = frozenset({"/model_info"})
RETRY_STATUSES = frozenset({429, 503})


class AdmissionMiddleware:
    """ASGI middleware; BentoML adds it with ``add_asgi_middleware`` (see service.service)."""

    def __init__(self, app: ASGIApp, current: Callable[[], Serving | None], retry_after_s: int = 1) -> None:
        """
        Args:
            app: the wrapped application.
            current: the running service's parts, ``None`` before it exists (service.service.current_serving):
                the in-flight limit and readiness come from it, and it is put on every request for the parsers
                and routes behind (service.serving).
            retry_after_s: the ``Retry-After`` seconds sent with 429 and 503.
        """
        self.app = app
        self.current = current
        self.retry_after = str(retry_after_s).encode()
        self.before_start = InFlight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The key gate in front has put the service's parts on the request already, where it runs.
        serving = (serving_of(scope) or self.current()) if scope["type"] == "http" else None
        if serving is not None:
            attach(scope, serving)
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            return await self.app(scope, receive, send)
        # The service's count (the batcher reads it, service.serving.InFlight); before the service exists, when
        # uvicorn answers nothing yet (BentoML creates it at startup), our own, with no limit.
        counter = serving.in_flight if serving else self.before_start
        max_in_flight = serving.config.max_in_flight if serving else counter.count + 1
        if counter.count >= max_in_flight:
            telemetry.refused("in_flight_limit")
            return await self.refuse(send, 429, f"over {max_in_flight} requests in progress; retry shortly")
        gated = scope["method"] == "POST" and scope["path"] not in ANSWERS_BEFORE_READY
        not_ready = (serving.not_ready_reason() if serving else "starting") if gated else None
        if not_ready:
            telemetry.refused("not_ready")
            return await self.refuse(send, 503, f"models are not ready yet ({not_ready})")

        answered = False

        async def send_with_retry_after(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and message["status"] in RETRY_STATUSES:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"retry-after", self.retry_after)]}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True

        counter.enter(scope.get("client"))
        try:
            await self.app(scope, receive, send_with_retry_after)
        finally:
            counter.leave(answered)

    async def refuse(self, send: Send, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error, without reading the body (with ``Retry-After`` for 429 and 503)."""
        await refuse(send, status, message, retry_after=self.retry_after)


class KeyGate:
    """ASGI middleware: the API-key check (service.auth), in front of BentoML's own layers (service.seams).

    BentoML adds it with ``add_asgi_middleware``; service.seams.put_first then moves it in front of BentoML's traffic
    metrics, tracing and timeout layers, which a refused key never reaches (only Starlette's outermost error handler
    wraps it). The key id it lets in rides on the request's state, for the task routes (service.auth.key_id_of).
    """

    def __init__(self, app: ASGIApp, current: Callable[[], Serving | None], retry_after_s: int = 1) -> None:
        """
        Args:
            app: the wrapped application.
            current: the running service's parts, ``None`` before it exists (service.service.current_serving); the
                keys are its ``keys``, ``None`` when none are configured.
            retry_after_s: the ``Retry-After`` seconds a 429 gets when its refusal names none.
        """
        self.app = app
        self.current = current
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        serving = self.current() if scope["type"] == "http" else None
        if serving is None:
            return await self.app(scope, receive, send)
        attach(scope, serving)  # for the layers behind, admission first: one lookup of the service per request
        if serving.keys is not None:
            refused = serving.keys.check(scope)
            if refused is not None:
                telemetry.refused("key_rate" if refused.status == 429 else "key")
                return await refuse(send, refused.status, refused.message, refused.headers, self.retry_after)
        await self.app(scope, receive, send)


async def refuse(send: Send, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = (),
                 retry_after: bytes = b"1") -> None:
    """Answer ``status`` with a JSON error and ``headers``, without reading the body; 429 and 503 get
    ``Retry-After`` (``headers``' own, else ``retry_after``)."""
    body = json.dumps({"error": message}).encode()
    extra = list(headers)
    if status in RETRY_STATUSES and not any(name == b"retry-after" for name, _ in extra):
        extra.append((b"retry-after", retry_after))
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})
