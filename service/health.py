"""``/livez`` and ``/readyz`` on a port of their own, answered by a thread of the worker.

BentoML answers its own ``/livez`` and ``/readyz`` on the event loop that also parses
every request. Under a flood of connections that loop is busy, and a probe waits its
turn behind them: seconds in the overload run (results/reliability.md), long enough
for Kubernetes to kill a pod that is merely busy. This server runs in its own thread,
so a probe needs only a share of the interpreter, not a turn of the loop.

Enabled with ``FASHION_HEALTH_PORT`` (``FASHION_HEALTH_HOST``, default ``0.0.0.0``).
It answers GET ``/livez`` (200 while the worker lives) and ``/readyz`` (200 once the
models are ready, else 503 with the reason), the JSON status pages it is given (``/gcz``: the
collector's passes and pauses, see service.gcstats; ``/gcz/census``: tracked objects by type),
and nothing else (404).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("bentoml.fashion_serve")


StatusPages = Mapping[str, Callable[[], dict[str, Any]]]


def make_handler(not_ready: Callable[[], str | None], pages: StatusPages | None = None) -> type[BaseHTTPRequestHandler]:
    """A request handler answering the two probes from ``not_ready()`` (``None`` when ready), and
    each of ``pages`` (path to a function returning the JSON body)."""
    pages = dict(pages or {})

    class ProbeHandler(BaseHTTPRequestHandler):
        server_version = "fashion-serve-health"
        timeout = 5  # a silent connection cannot hold a handler thread for long

        def do_GET(self) -> None:  # http.server calls this name
            if self.path == "/livez":
                self.answer(200, {"live": True})
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
                        pages: StatusPages | None = None) -> ThreadingHTTPServer:
    """Serve the probes (and status ``pages``) on ``host:port`` from a daemon thread; returns the server
    (``shutdown()`` stops it)."""
    server = ThreadingHTTPServer((host, port), make_handler(not_ready, pages))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-probes", daemon=True).start()
    log.info("health probes on http://%s:%d/livez and /readyz", host, port)
    return server
