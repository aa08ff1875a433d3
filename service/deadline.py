"""The per-request timeout (``traffic.timeout``), without objects that outlive the request.

BentoML 1.4's ``TimeoutMiddleware`` (``bentoml/_internal/server/http/traffic.py``) schedules
``loop.call_later(timeout, ...)`` for every request and never cancels it. Each timer keeps its
handle, a waiter future and a context alive for the whole timeout after the request has been
answered: with ``timeout=30`` at ~1,400 req/s that is ~40k timers and ~250k objects, which
survive into the collector's oldest generation and make every full pass walk them (issue 16;
found with ``service.gcstats.census``).

``DeadlineMiddleware`` keeps BentoML's behaviour -- a ``504`` when no response has started within
``timeout`` seconds, no limit once it has -- with ``asyncio.timeout`` in the request's own task:
its timer is cancelled as soon as the response starts or the request ends. ``install`` makes
BentoML build it in place of its own, so ``traffic.timeout`` keeps configuring it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class DeadlineMiddleware:
    """ASGI middleware: ``504`` if the response has not started within ``timeout`` seconds."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], timeout: float) -> None:
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


def install() -> bool:
    """Make BentoML use ``DeadlineMiddleware`` where it would build its ``TimeoutMiddleware``.

    BentoML imports the class from its module each time it builds a worker's app, so replacing the
    module attribute before the app is built is enough. Returns False (and changes nothing) if this
    BentoML has no such class, so an upgrade that moves it shows up in the tests, not as a crash.
    """
    try:
        from bentoml._internal.server.http import traffic
    except ImportError:
        return False
    if not hasattr(traffic, "TimeoutMiddleware"):
        return False
    traffic.TimeoutMiddleware = DeadlineMiddleware
    return True
