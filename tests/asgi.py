"""The service in this process: its ASGI app (``FashionClassifier.to_asgi()``, the session's ``service_app``)
under Starlette's TestClient, as BentoML's own tests drive a service. No server process, no port.

Each :func:`in_process` block starts a new service instance (the app's lifespan), which reads its settings
(``FASHION_*``) from the environment then: a test module passes the settings it needs, and they are restored
on the way out. The project's clients are pointed at the same app through :func:`transport_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.helpers import wait_until

BASE_URL = "http://testserver"  # what Starlette's TestClient puts in every request's URL
READY_TIMEOUT_S = 300  # a hang guard: every backend loads and warms up in well under a minute


@contextlib.contextmanager
def in_process(app, metrics_dir: Path, env: dict[str, str] | None = None) -> Iterator:
    """A started, ready TestClient on ``app``, its service built with ``env`` added to the environment.

    Args:
        app: the session's ``service_app``.
        metrics_dir: an empty folder for the Prometheus series, as ``bentoml serve`` makes one for its workers
            (``/metrics`` reads it).
        env: settings for this service instance (``FASHION_*``), set while the block runs.

    Yields:
        The ``starlette.testclient.TestClient``, after ``/readyz`` answered 200.
    """
    from starlette.testclient import TestClient

    settings = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **(env or {})}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    init_task_store()
    try:
        with TestClient(app) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, "the in-process service to be ready",
                       READY_TIMEOUT_S, interval=0.25)
            yield client
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def init_task_store() -> None:
    """Create BentoML's task store, as ``bentoml serve`` does before it starts a worker."""
    from _bentoml_impl.tasks.result import Sqlite3Store
    from bentoml._internal.configuration.containers import BentoMLContainer

    Sqlite3Store.init_db(str(BentoMLContainer.result_store_file.get()))


def transport_of(client) -> httpx.BaseTransport:
    """The TestClient's own transport: an ``httpx.Client`` built on it (``FashionClient(transport=...)``) sends
    its requests into the in-process app, on the app's event loop, from any thread."""
    return client._transport  # httpx.Client keeps its transport here; the TestClient passes its ASGI one in


class ThreadedTransport(httpx.AsyncBaseTransport):
    """An async transport over :func:`transport_of`: the app runs on the TestClient's event loop, so an async
    client on another loop hands each request to a thread that waits for the app's answer."""

    def __init__(self, client) -> None:
        self.sync = transport_of(client)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=body)
        response = await asyncio.to_thread(self.sync.handle_request, copy)
        return httpx.Response(response.status_code, headers=response.headers, content=response.read())


def get_as_sent(client, app, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``target`` with the request target handed to ``app`` byte for byte, as uvicorn hands it on (httpx, and
    so the TestClient, would normalise ``..`` first): the path percent-decoded, ``raw_path`` as sent.

    Args:
        client: a started TestClient on ``app`` (its event loop runs the call).
        app: the ASGI app.
        target: the request target, e.g. ``/ui/..%2fpyproject.toml``.

    Returns:
        (status, headers with lower-case names, body).
    """
    from urllib.parse import unquote

    raw_path, _, query = target.encode("latin-1").partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote(raw_path.decode("latin-1")), "raw_path": raw_path, "query_string": query,
             "root_path": "", "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 50000),
             "server": ("testserver", 80)}
    messages: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        messages.append(message)

    client.portal.call(app, scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


def point_cli_at(monkeypatch, client) -> str:
    """Send the command-line client's requests (``clients.__main__``) into the in-process app: every
    ``FashionClient`` it makes gets the TestClient's transport.

    Returns:
        the URL to pass as ``--url``.
    """
    import clients.__main__ as cli

    made = cli.FashionClient
    monkeypatch.setattr(cli, "FashionClient", lambda *args, **kwargs: made(*args, transport=transport_of(client),
                                                                            **kwargs))
    return BASE_URL
