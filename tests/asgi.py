"""The service in this process: its ASGI app (``FashionClassifier.to_asgi()``, the session's ``service_app``)
under Starlette's TestClient, as BentoML's own tests drive a service. No server process, no port.

Each :func:`in_process` block starts a new service instance (the app's lifespan), which reads its settings
(``FASHION_*``) from the environment then: a test module passes the settings it needs, and they are restored
on the way out. The project's clients are pointed at the same app through :func:`transport_of`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import httpx

from tests.helpers import wait_until

BASE_URL = "http://testserver"  # what Starlette's TestClient puts in every request's URL
READY_TIMEOUT_S = 300  # a hang guard: every backend loads and warms up in well under a minute


@contextlib.contextmanager
def in_process(app, env: dict[str, str] | None = None) -> Iterator:
    """A started, ready TestClient on ``app``, its service built with ``env`` added to the environment.

    Args:
        app: the session's ``service_app`` (which also sets the session's metrics folder, read by /metrics).
        env: settings for this service instance (``FASHION_*``), set while the block runs.

    Yields:
        The ``starlette.testclient.TestClient``, after ``/readyz`` answered 200.
    """
    from starlette.testclient import TestClient

    settings = env or {}
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


def batch_histogram(http) -> tuple[float, float]:
    """(model calls, images) so far, from the service's ``fashion_batch_size`` histogram on /metrics."""
    series = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in http.get("/metrics").text.splitlines()
              if line.startswith("fashion_batch_size_")}
    return series["fashion_batch_size_count"], series["fashion_batch_size_sum"]


def init_task_store() -> None:
    """Create BentoML's task store, as ``bentoml serve`` does before it starts a worker."""
    from _bentoml_impl.tasks.result import Sqlite3Store
    from bentoml._internal.configuration.containers import BentoMLContainer

    Sqlite3Store.init_db(str(BentoMLContainer.result_store_file.get()))


def transport_of(client) -> httpx.BaseTransport:
    """The TestClient's own transport: an ``httpx.Client`` built on it (``FashionClient(transport=...)``) sends
    its requests into the in-process app, on the app's event loop, from any thread."""
    return client._transport  # httpx.Client keeps its transport here; the TestClient passes its ASGI one in


def get_as_sent(client, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``target`` with the request target handed to the app byte for byte, as uvicorn hands it on (httpx, and
    so the TestClient, would normalise ``..`` first): the path percent-decoded, ``raw_path`` as sent.

    Args:
        client: a started TestClient (its event loop runs the call).
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

    client.portal.call(client.app, scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


def point_cli_at(monkeypatch, client, transport: httpx.BaseTransport | None = None) -> str:
    """Send the command-line client's requests (``clients.__main__``) into the in-process app: every
    ``FashionClient`` it makes gets the TestClient's transport, or ``transport`` (one wrapping it).

    Returns:
        the URL to pass as ``--url``.
    """
    import clients.__main__ as cli

    made, transport = cli.FashionClient, transport or transport_of(client)
    monkeypatch.setattr(cli, "FashionClient", lambda *args, **kwargs: made(*args, transport=transport, **kwargs))
    return BASE_URL


def send_until_answered(client, request: httpx.Request, timeout: float = 120.0) -> httpx.Response:
    """Send ``request`` into the TestClient's app and return the answer once the app has sent it, as a server does.

    Starlette's TestClient returns only when the app's call has ended, background work included; a dataset task
    runs as the background of its submit request (service.task_routes), so its submit would answer only once the
    task had ended. Here the task goes on, on the TestClient's event loop, after its answer is back.

    Args:
        client: a started TestClient.
        request: an ``httpx.Request`` whose URL is relative to :data:`BASE_URL`.
        timeout: seconds to wait for the answer (a hang guard).

    Returns:
        the app's answer.
    """
    import threading

    import anyio

    body = request.read()
    raw_path, _, _ = request.url.raw_path.partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
             "scheme": "http", "path": request.url.path, "raw_path": raw_path, "query_string": request.url.query,
             "root_path": "", "headers": [(name.lower(), value) for name, value in request.headers.raw],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    messages: list[dict] = []
    answered = threading.Event()
    state: dict = {}

    async def receive() -> dict:
        if not state.get("read"):
            state["read"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        if not answered.is_set():  # the client stays connected until it has its answer
            state["closed"] = state.get("closed") or anyio.Event()
            await state["closed"].wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()
            if state.get("closed"):
                state["closed"].set()

    call = client.portal.start_task_soon(client.app, scope, receive, send)
    call.add_done_callback(lambda _: answered.set())
    assert answered.wait(timeout), f"no answer to {request.method} {request.url.path} within {timeout} s"
    if call.done() and call.exception() is not None:
        raise call.exception()
    start = next(m for m in messages if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return httpx.Response(start["status"], headers=start["headers"], content=content, request=request)
