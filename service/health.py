"""``/livez`` and ``/readyz`` on a port of their own, answered by a thread of the worker.

BentoML answers its own ``/livez`` and ``/readyz`` on the event loop that also parses
every request. Under a flood of connections that loop is busy, and a probe waits its
turn behind them (and behind whatever else holds the loop), which can be long enough
for Kubernetes to kill a pod that is merely busy. This server runs in its own thread,
so a probe needs only a share of the interpreter, not a turn of the loop.

Liveness is the event loop's: a :class:`Heartbeat` task on the loop stamps the time every
second, and ``/livez`` answers 503 once the stamp is older than ``FASHION_LIVENESS_STALE_S``
(default 10 s), i.e. when the loop is stuck (a blocking call, a deadlock) and no request can
be answered even though this thread still can. A loop that is merely busy still runs the
task between requests, so a flood does not fail liveness.

Enabled with ``FASHION_HEALTH_PORT`` (``FASHION_HEALTH_HOST``, default ``0.0.0.0``).
It answers GET ``/livez`` (200 while the loop beats, else 503 with how long it has been
silent; either way it names the loop's class, so one can see which loop FASHION_EVENT_LOOP chose) and
``/readyz`` (200 once the models are ready, else 503 with the reason), the JSON status pages it is
given (``/gcz``: the collector's passes and pauses, see service.gcstats; ``/gcz/census``:
tracked objects by type; ``/requestz``: API requests let in, answered in full and in progress, see
service.serving.InFlight), and nothing else (404).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("bentoml.fashion_serve")


class Heartbeat:
    """The event loop's pulse, read by the probe thread.

    Args:
        stale_after: seconds without a beat after which the loop counts as stuck.
        interval: seconds between beats.
    """

    def __init__(self, stale_after: float, interval: float = 1.0) -> None:
        self.stale_after, self.interval = stale_after, interval
        self.last: float | None = None  # None until the loop has started beating (the start is the startup probe's)
        self.task: asyncio.Task | None = None
        self.loop: str | None = None  # the class of the loop it beats on: which one FASHION_EVENT_LOOP chose

    async def beat(self) -> None:
        """Stamp the time, forever, on the loop this runs on."""
        while True:
            self.last = time.monotonic()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Begin beating on the running event loop (call from it, e.g. a startup hook)."""
        loop = asyncio.get_running_loop()
        self.loop = f"{type(loop).__module__}.{type(loop).__qualname__}"
        self.task = loop.create_task(self.beat(), name="liveness-heartbeat")

    def age(self) -> float | None:
        """Seconds since the last beat; ``None`` before the first."""
        return None if self.last is None else time.monotonic() - self.last

    def stuck_reason(self) -> str | None:
        """``None`` while the loop beats (or has not started yet); else how long it has been silent."""
        silent = self.age()
        return f"the event loop has not run for {silent:.1f} s" if silent and silent > self.stale_after else None


StatusPages = Mapping[str, Callable[[], dict[str, Any]]]


def make_handler(not_ready: Callable[[], str | None], pages: StatusPages | None = None,
                 heartbeat: Heartbeat | None = None) -> type[BaseHTTPRequestHandler]:
    """A request handler answering the two probes from ``not_ready()`` (``None`` when ready) and ``heartbeat``
    (none: live while this thread runs), and each of ``pages`` (path to a function returning the JSON body)."""
    pages = dict(pages or {})

    class ProbeHandler(BaseHTTPRequestHandler):
        server_version = "fashion-serve-health"
        timeout = 5  # a silent connection cannot hold a handler thread for long

        def do_GET(self) -> None:  # http.server calls this name
            if self.path == "/livez":
                reason = heartbeat.stuck_reason() if heartbeat else None
                age = heartbeat.age() if heartbeat else None
                self.answer(503 if reason else 200, {"live": reason is None, "reason": reason,
                                                     "heartbeat_age_s": None if age is None else round(age, 3),
                                                     "event_loop": heartbeat.loop if heartbeat else None})
            elif self.path == "/readyz":
                reason = not_ready()
                self.answer(503 if reason else 200, {"ready": reason is None, "reason": reason})
            elif self.path in pages:
                self.answer(200, pages[self.path]())
            else:
                self.answer(404, {"error": f"only {['/livez', '/readyz', *pages]} are served on this port"})

        def answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # probes every few seconds would flood the log
            pass

    return ProbeHandler


def start_health_server(host: str, port: int, not_ready: Callable[[], str | None],
                        pages: StatusPages | None = None,
                        heartbeat: Heartbeat | None = None) -> ThreadingHTTPServer:
    """Serve the probes (and status ``pages``) on ``host:port`` from a daemon thread; returns the server
    (``shutdown()`` stops it)."""
    server = ThreadingHTTPServer((host, port), make_handler(not_ready, pages, heartbeat))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-probes", daemon=True).start()
    log.info("health probes on http://%s:%d/livez and /readyz", host, port)
    return server
