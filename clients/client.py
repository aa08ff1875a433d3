"""Python client for the fashion-serve HTTP API, sync and async, built on httpx.

    from clients.client import FashionClient
    with FashionClient("http://localhost:3000") as client:
        client.wait_ready()
        print(client.classify("shoe.png").label)

Retries (exponential backoff with full jitter) happen only on 429, 502, 503, 504 and
connection errors; every other 4xx is raised at once as :class:`ServiceError`. A 502 is how a load balancer
reports a connection its replica closed unanswered (a replica stopping as the request arrived), which this
client retries as a connection error when it talks to the service directly.

A service with API keys (service.auth) needs one: ``FashionClient(url, api_key=...)``, else the
``FASHION_API_KEY`` environment variable; it is sent as ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

RETRY_STATUSES = frozenset({429, 502, 503, 504})
API_KEY_ENV = "FASHION_API_KEY"
# The compact answer (service.answers): ``fashion.contract.ANSWER_DTYPE`` rows as a .npy body.
NPY_ANSWER = "application/x-npy"
T = TypeVar("T")
ImageLike = str | Path | bytes | np.ndarray | Any  # Any: a PIL image


class ServiceError(RuntimeError):
    """The service answered with an error status (after any retries)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TopK:
    class_id: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One image's answer."""

    class_id: int
    label: str
    confidence: float
    top_k: tuple[TopK, ...]
    backend: str
    model_version: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prediction:
        return cls(
            class_id=data["class_id"], label=data["label"], confidence=data["confidence"],
            top_k=tuple(TopK(**t) for t in data["top_k"]), backend=data["backend"],
            model_version=data["model_version"],
        )


@dataclass
class RetryPolicy:
    """How often and how long to retry retryable failures; ``retried`` counts retries made."""

    attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0
    retried: int = field(default=0, compare=False)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Full-jitter exponential backoff, never shorter than a ``Retry-After`` in seconds."""
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            return max(backoff, min(float(retry_after), self.max_delay))
        return backoff


@dataclass(frozen=True)
class RecordAnswer:
    """A compact answer: one :data:`fashion.contract.ANSWER_DTYPE` row per image, and who computed them."""

    records: np.ndarray
    backend: str
    model_version: str


def read_records(response: httpx.Response) -> RecordAnswer:
    """The rows of a compact (``application/x-npy``) answer; a body of any other kind is a :class:`ServiceError`."""
    from fashion.contract import ANSWER_DTYPE

    records = np.load(io.BytesIO(response.content), allow_pickle=False)
    if records.dtype != ANSWER_DTYPE:
        raise ServiceError(response.status_code, f"answer rows of dtype {records.dtype}, expected {ANSWER_DTYPE}")
    return RecordAnswer(records, response.headers.get("x-fashion-backend", ""),
                        response.headers.get("x-fashion-model-version", ""))


def expect_records(answer: Any, allow_json: bool = False) -> RecordAnswer:
    """``answer`` if compact. A JSON answer (an older service, or a proxy that dropped ``Accept``) is an error,
    or with ``allow_json`` turned into rows: class id and confidence as sent, probabilities of the top-k classes
    it lists, NaN for the others."""
    if isinstance(answer, RecordAnswer):
        return answer
    if not allow_json or not isinstance(answer, list) or not answer:
        raise ServiceError(200, f"the service answered JSON, not {NPY_ANSWER}: it predates compact answers")
    from fashion.contract import ANSWER_DTYPE

    records = np.zeros(len(answer), ANSWER_DTYPE)
    records["class_id"] = [a["class_id"] for a in answer]
    records["confidence"] = [a["confidence"] for a in answer]
    records["probabilities"] = np.nan
    for row, a in zip(records, answer, strict=True):
        for top in a.get("top_k", []):
            row["probabilities"][top["class_id"]] = top["probability"]
    return RecordAnswer(records, answer[0]["backend"], answer[0]["model_version"])


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)


def _retryable(outcome: httpx.Response | Exception) -> bool:
    if isinstance(outcome, httpx.Response):
        return outcome.status_code in RETRY_STATUSES
    return isinstance(outcome, httpx.TransportError)


def image_bytes(image: ImageLike) -> tuple[bytes, str]:
    """File bytes and a content type for a path, raw bytes, PIL image or 28 x 28 uint8 array."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes(), "application/octet-stream"
    if isinstance(image, bytes):
        return image, "application/octet-stream"
    if isinstance(image, np.ndarray):
        from fashion.imaging import encode_png

        if image.shape != (28, 28) or image.dtype != np.uint8:
            raise ValueError(f"an array image must be uint8 (28, 28); got {image.dtype} {image.shape}")
        return encode_png(image), "image/png"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # a PIL image
    return buffer.getvalue(), "image/png"


def npy_bytes(pixels: np.ndarray) -> bytes:
    """``uint8[N, 28, 28]`` as a .npy body."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels, dtype=np.uint8), allow_pickle=False)
    return buffer.getvalue()


def key_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries ``api_key`` (else ``FASHION_API_KEY``); none when neither is set."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


class _Requests:
    """Shared request building and answer parsing of both clients."""

    def __init__(self, base_url: str, timeout: float, retry: RetryPolicy | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    @staticmethod
    def classify_request(image: ImageLike, backend: str | None) -> dict[str, Any]:
        data, content_type = image_bytes(image)
        return {"method": "POST", "url": "/classify", "params": {"backend": backend} if backend else None,
                "files": {"images": ("image", data, content_type)}}

    @staticmethod
    def files_request(images: Sequence[ImageLike], backend: str | None) -> dict[str, Any]:
        files = [("images", (f"image{i}", *image_bytes(img))) for i, img in enumerate(images)]
        return {"method": "POST", "url": "/classify_batch", "files": files,
                "data": {"backend": backend} if backend else None}

    @staticmethod
    def array_request(pixels: np.ndarray, backend: str | None, accept: str = "application/json") -> dict[str, Any]:
        return {"method": "POST", "url": "/classify_array", "content": npy_bytes(pixels),
                "params": {"backend": backend} if backend else None,
                "headers": {"Content-Type": "application/x-npy", "Accept": accept}}

    @staticmethod
    def parse(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ServiceError(response.status_code, _error_message(response))
        if response.headers.get("content-type", "").startswith(NPY_ANSWER):
            return read_records(response)
        return response.json()


class FashionClient(_Requests):
    """Blocking client.

    Args:
        base_url: e.g. ``http://localhost:3000``.
        timeout: seconds per request attempt.
        retry: retry policy (default: 5 attempts).
        transport: an httpx transport (tests pass a mock one).
        api_key: the service's API key, if it has keys (default: ``FASHION_API_KEY``, else none).
        verify: TLS verification for ``https://`` URLs: ``True`` (the system's CAs), a CA bundle's path, or an
            ``ssl.SSLContext``.
    """

    def __init__(self, base_url: str = "http://localhost:3000", timeout: float = 30.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None,
                 max_connections: int = 64, api_key: str | None = None, verify: Any = True) -> None:
        super().__init__(base_url, timeout, retry)
        # httpx.Client is thread-safe: the batch CLI shares one between its request threads.
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                 limits=httpx.Limits(max_connections=max_connections), headers=key_headers(api_key),
                                 verify=verify)

    def __enter__(self) -> FashionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, request: dict[str, Any]) -> Any:
        for attempt in range(self.retry.attempts):
            try:
                outcome: httpx.Response | Exception = self.http.request(**request)
            except httpx.TransportError as exc:
                outcome = exc
            if not _retryable(outcome) or attempt == self.retry.attempts - 1:
                break
            self.retry.retried += 1
            time.sleep(self.retry.delay(attempt, getattr(outcome, "headers", {}).get("retry-after")))
        if isinstance(outcome, Exception):
            raise outcome
        return self.parse(outcome)

    def classify(self, image: ImageLike, backend: str | None = None) -> Prediction:
        """Classify one image (path, bytes, PIL image or uint8 28 x 28 array)."""
        return Prediction.from_json(self._send(self.classify_request(image, backend))[0])

    def classify_files(self, images: Sequence[ImageLike], backend: str | None = None) -> list[Prediction]:
        """Classify many image files in one request; answers in input order."""
        return [Prediction.from_json(p) for p in self._send(self.files_request(images, backend))]

    def classify_array(self, pixels: np.ndarray, backend: str | None = None) -> list[Prediction]:
        """Classify ``uint8[N, 28, 28]`` pixels in one request; answers in input order."""
        return [Prediction.from_json(p) for p in self._send(self.array_request(pixels, backend))]

    def classify_array_records(self, pixels: np.ndarray, backend: str | None = None,
                               allow_json: bool = False) -> RecordAnswer:
        """Classify ``uint8[N, 28, 28]`` pixels, answered compactly (``Accept: application/x-npy``): class ids,
        confidences and all probabilities as arrays; what batch jobs use. ``allow_json``: see :func:`expect_records`.
        """
        return expect_records(self._send(self.array_request(pixels, backend, NPY_ANSWER)), allow_json)

    def classify_many(self, pixels: np.ndarray, backend: str | None = None, chunk_size: int = 1024,
                      concurrency: int = 4) -> list[Prediction]:
        """Classify any number of images: chunked, sent concurrently, answers in input order."""
        chunks = [pixels[i:i + chunk_size] for i in range(0, len(pixels), chunk_size)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            parts = list(pool.map(lambda chunk: self.classify_array(chunk, backend), chunks))
        return [p for part in parts for p in part]

    def model_info(self) -> dict[str, Any]:
        """The service's per-backend facts (device, version, accuracy...)."""
        return self._send({"method": "POST", "url": "/model_info", "json": {}})

    def is_ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.5) -> None:
        """Block until ``/readyz`` answers 200; raise TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.base_url} not ready after {timeout}s")
            time.sleep(interval)


class AsyncFashionClient(_Requests):
    """The asyncio twin of :class:`FashionClient` (same methods and options, awaitable)."""

    def __init__(self, base_url: str = "http://localhost:3000", timeout: float = 30.0,
                 retry: RetryPolicy | None = None, max_connections: int = 64,
                 transport: httpx.AsyncBaseTransport | None = None, api_key: str | None = None,
                 verify: Any = True) -> None:
        super().__init__(base_url, timeout, retry)
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport,
                                      limits=httpx.Limits(max_connections=max_connections),
                                      headers=key_headers(api_key), verify=verify)

    async def __aenter__(self) -> AsyncFashionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, request: dict[str, Any]) -> Any:
        for attempt in range(self.retry.attempts):
            try:
                outcome: httpx.Response | Exception = await self.http.request(**request)
            except httpx.TransportError as exc:
                outcome = exc
            if not _retryable(outcome) or attempt == self.retry.attempts - 1:
                break
            self.retry.retried += 1
            await asyncio.sleep(self.retry.delay(attempt, getattr(outcome, "headers", {}).get("retry-after")))
        if isinstance(outcome, Exception):
            raise outcome
        return self.parse(outcome)

    async def classify(self, image: ImageLike, backend: str | None = None) -> Prediction:
        return Prediction.from_json((await self._send(self.classify_request(image, backend)))[0])

    async def classify_files(self, images: Sequence[ImageLike], backend: str | None = None) -> list[Prediction]:
        return [Prediction.from_json(p) for p in await self._send(self.files_request(images, backend))]

    async def classify_array(self, pixels: np.ndarray, backend: str | None = None) -> list[Prediction]:
        return [Prediction.from_json(p) for p in await self.classify_array_json(pixels, backend)]

    async def classify_array_json(self, pixels: np.ndarray, backend: str | None = None) -> list[dict[str, Any]]:
        """The answers as the service sent them (no objects built: the cheaper path for bulk jobs)."""
        return await self._send(self.array_request(pixels, backend))

    async def classify_array_records(self, pixels: np.ndarray, backend: str | None = None,
                                     allow_json: bool = False) -> RecordAnswer:
        """The compact answer (see :meth:`FashionClient.classify_array_records`)."""
        return expect_records(await self._send(self.array_request(pixels, backend, NPY_ANSWER)), allow_json)

    async def classify_many(self, pixels: np.ndarray, backend: str | None = None, chunk_size: int = 1024,
                            concurrency: int = 4) -> list[Prediction]:
        """Chunked, at most ``concurrency`` requests in flight, answers in input order."""
        chunks = [pixels[i:i + chunk_size] for i in range(0, len(pixels), chunk_size)]
        parts = await gather_limited([lambda c=c: self.classify_array(c, backend) for c in chunks], concurrency)
        return [p for part in parts for p in part]

    async def model_info(self) -> dict[str, Any]:
        return await self._send({"method": "POST", "url": "/model_info", "json": {}})

    async def is_ready(self) -> bool:
        try:
            return (await self.http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_ready(self, timeout: float = 120.0, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not await self.is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.base_url} not ready after {timeout}s")
            await asyncio.sleep(interval)


async def gather_limited(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run coroutine factories with at most ``limit`` at once; results in job order."""
    semaphore = asyncio.Semaphore(max(1, limit))

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await job()

    return list(await asyncio.gather(*(run(job) for job in jobs)))
