"""The Python client's retries, backoff and chunking against a mock transport (no service). Against the service:
tests/integration/test_clients_http.py, and tests/e2e/test_clients.py for a killed job."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest

from clients.client import AsyncFashionClient, FashionClient, RetryPolicy, ServiceError

ANSWER = [{"class_id": 9, "label": "Ankle boot", "confidence": 0.9,
           "top_k": [{"class_id": 9, "label": "Ankle boot", "probability": 0.9}], "backend": "onnx-torch",
           "model_version": "v1"}]


def scripted(statuses: list[int]):
    """A mock transport answering the given statuses in turn (then 200s); records the calls."""
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        status = statuses[len(calls) - 1] if len(calls) <= len(statuses) else 200
        return httpx.Response(status, json=ANSWER if status == 200 else [{"error": f"status {status}"}])

    return httpx.MockTransport(handle), calls


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retries_only_retryable_statuses(status):
    transport, calls = scripted([status, status])
    client = FashionClient("http://test", transport=transport, retry=RetryPolicy(base_delay=0.001))
    assert client.classify(np.zeros((28, 28), np.uint8)).label == "Ankle boot"
    assert len(calls) == 3 and client.retry.retried == 2


@pytest.mark.parametrize("status", [400, 404, 413, 415, 422, 500])
def test_other_errors_are_raised_at_once(status):
    transport, calls = scripted([status])
    client = FashionClient("http://test", transport=transport, retry=RetryPolicy(base_delay=0.001))
    with pytest.raises(ServiceError) as err:
        client.classify(b"not an image")
    assert err.value.status == status and f"status {status}" in str(err.value)
    assert len(calls) == 1


def test_connection_errors_are_retried_then_raised():
    def refuse(request):
        raise httpx.ConnectError("refused")

    client = FashionClient("http://test", transport=httpx.MockTransport(refuse),
                           retry=RetryPolicy(attempts=3, base_delay=0.001))
    with pytest.raises(httpx.ConnectError):
        client.model_info()
    assert client.retry.retried == 2


def test_backoff_is_jittered_and_capped():
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    delays = [policy.delay(attempt) for attempt in range(10) for _ in range(20)]
    assert max(delays) <= 1.0 and len(set(delays)) > 100
    assert policy.delay(0, retry_after="0.5") >= 0.5


def test_async_client_chunks_and_keeps_order():
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        pixels = np.load(io.BytesIO(request.content))
        seen.append(len(pixels))
        return httpx.Response(200, json=[{**ANSWER[0], "class_id": int(p[0, 0])} for p in pixels])

    async def run():
        async with AsyncFashionClient("http://test", transport=httpx.MockTransport(handle)) as client:
            pixels = np.zeros((25, 28, 28), np.uint8)
            pixels[:, 0, 0] = np.arange(25)
            return await client.classify_many(pixels, chunk_size=10, concurrency=3)

    answers = asyncio.run(run())
    assert [a.class_id for a in answers] == list(range(25)) and sorted(seen) == [5, 10, 10]
