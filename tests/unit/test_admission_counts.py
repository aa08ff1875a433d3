"""Admission control counts the requests it lets in and those answered in full: the worker logs both as it stops."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service.admission import AdmissionMiddleware, KeyGate
from service.serving import InFlight


def serving(max_in_flight: int = 8) -> SimpleNamespace:
    """A stand-in for service.serving.Serving with what admission reads: no API keys."""
    return SimpleNamespace(in_flight=InFlight(), config=SimpleNamespace(max_in_flight=max_in_flight),
                           not_ready_reason=lambda: None, keys=None)


async def answer_in_full(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await send({"type": "http.response.body", "body": b"b"})


async def fail_halfway(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    raise ConnectionResetError("client went away")


def call(app, path: str = "/classify", headers: list | None = None) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "client": ("127.0.0.1", 5000), "headers": headers or []}
    asyncio.run(app(scope, receive, send))
    return sent


def test_requests_let_in_and_answered_in_full_are_counted():
    parts = serving()
    call(AdmissionMiddleware(answer_in_full, lambda: parts))
    with pytest.raises(ConnectionResetError):
        call(AdmissionMiddleware(fail_halfway, lambda: parts))
    counts = parts.in_flight
    assert counts.totals() == {"let_in": 2, "answered": 1, "in_progress": 0}


def test_refused_and_probe_requests_are_not_let_in():
    parts = serving(max_in_flight=0)
    refused = call(AdmissionMiddleware(answer_in_full, lambda: parts))
    assert refused[0]["status"] == 429
    call(AdmissionMiddleware(answer_in_full, lambda: parts), path="/readyz")
    assert (parts.in_flight.let_in, parts.in_flight.answered) == (0, 0)


def test_with_keys_a_refused_key_is_answered_before_it_counts_and_a_good_one_is_let_in():
    from service.auth import KeyRing, new_key

    key, entry = new_key(["inference"], "1/h", burst=1)
    parts = serving()
    parts.keys = KeyRing([entry])
    app = KeyGate(AdmissionMiddleware(answer_in_full, lambda: parts), lambda: parts)
    unauthorised = call(app)
    assert unauthorised[0]["status"] == 401 and (b"www-authenticate", b'Bearer realm="fashion-serve"') in \
        unauthorised[0]["headers"]
    keyed = [(b"authorization", f"Bearer {key}".encode())]
    assert call(app, headers=keyed)[0]["status"] == 200
    over = call(app, headers=keyed)[0]
    assert over["status"] == 429 and dict(over["headers"])[b"retry-after"] == b"3600"
    assert call(app, path="/readyz")[0]["status"] == 200
    assert (parts.in_flight.let_in, parts.in_flight.answered) == (1, 1)  # the good request only
