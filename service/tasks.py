"""Whole datasets as BentoML tasks: ``/classify_dataset/submit``, ``progress``, ``status``, ``get``, ``cancel``.

``@bentoml.task(route="/classify_dataset")`` makes BentoML serve ``submit`` (POST: stores the
request, answers a task id at once), ``status`` and ``get`` (GET ``?task_id=``), ``retry`` (POST)
and ``cancel`` (PUT). What BentoML 1.4's own server does with them (``_bentoml_impl/server/app.py``,
``_bentoml_impl/tasks/``), and what :class:`TaskMiddleware` changes:

* The task runs in this worker process, as a background step of its submit request. BentoML keeps
  the request (body base64-encoded, for ``retry``) and the answer in ``$BENTOML_HOME/task_result.db``
  (``BENTOML_RESULT_STORE``; emptied when the server starts) for 24 hours.
* ``submit`` would read and store the whole body, without a limit, before any code of ours runs. The
  middleware reads it first: over ``FASHION_MAX_TASK_BYTES``, or announcing in its header more than
  ``FASHION_MAX_TASK_IMAGES`` images, it is answered 413; with ``FASHION_MAX_ACTIVE_TASKS`` tasks in
  progress, 429. An accepted upload goes to the task through the request's state and BentoML
  stores an empty body: base64 in SQLite costs a third more than the upload on disk for a day, and
  encoding it at submit and decoding it at every ``get`` stalled the event loop (0.25 s for 47 MB).
  So ``retry`` is refused (409): submit the file again.
* ``status`` says ``in_progress``, ``completed``, ``failed`` or ``canceled``, never how far a task
  got: ``GET /classify_dataset/progress?task_id=`` answers images done of total from the
  :class:`TaskBoard` (this process's memory; the service has one worker).
* BentoML's own server cannot cancel: ``cancel`` marks the row canceled and answers 400, the task
  runs on, and its end overwrites the mark. The middleware answers ``cancel`` itself: it raises the
  task's flag, which the task checks before every chunk, and lets BentoML mark the row. The task
  then stops by raising :class:`TaskCancelled`, which BentoML does not catch (a ``BaseException``),
  so nothing overwrites the mark; the middleware swallows it when the submit request ends. A
  canceled task has no result (``get`` answers 400 "not completed").
* A task that fails (unreadable file, wrong shape, unknown backend, model error) ends ``failed``,
  its reason in ``get``'s body and in ``progress``; nothing leaves it ``in_progress``.

The images go through the service's one batcher in chunks of ``FASHION_TASK_CHUNK_IMAGES``, one
chunk queued at a time, so an online request waits behind one chunk's model call at most.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from fashion.backends import BACKENDS
from fashion.contract import CLASS_NAMES, NUM_CLASSES, answer_records, softmax
from fashion.metrics import confusion_matrix
from service.answers import NPY, negotiate, npy_body
from service.batcher import MicroBatcher, OverloadedError
from service.datasets import Upload, declared_count, read_dataset
from service.inputs import RequestError, parse_backend, read_body

log = logging.getLogger("bentoml.fashion_serve")

TASK_ROUTE = "/classify_dataset"
# Where the submit's checked upload waits for the task (the request's ASGI state; see TaskMiddleware.submit).
UPLOAD_STATE = "fashion_dataset_upload"
# As long as BentoML keeps a task's result (Sqlite3Store.RESULT_RETENTION).
RETENTION_S = 24 * 3600
MAX_REMEMBERED = 10_000

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class TaskLimits:
    """Task limits, from ``FASHION_MAX_TASK_IMAGES``, ``FASHION_MAX_TASK_BYTES``, ``FASHION_TASK_CHUNK_IMAGES``
    and ``FASHION_MAX_ACTIVE_TASKS``."""

    max_images: int = 100_000
    # 100,000 raw images (78.4 MB) with their labels and the form around them fit.
    max_bytes: int = 80 * 1024 * 1024
    # Images per batcher call, as many as the service's own batches (service.service.MAX_BATCH_IMAGES). Measured
    # here (README "Dataset tasks"): during an onnx-torch task, online p99 16 ms with 256, 92 ms with 1,024.
    chunk_images: int = 256
    max_active: int = 4
    # For tests only (FASHION_TASK_HOLD_FILE): while this file exists, a task waits before each chunk after
    # its first, so that a test sees it part-way through (and can cancel it there) without racing its end.
    hold_file: str | None = None

    def __post_init__(self) -> None:
        if min(self.max_images, self.max_bytes, self.chunk_images, self.max_active) < 1:
            raise ValueError(f"task limits must be positive: {self}")

    @classmethod
    def from_env(cls) -> TaskLimits:
        env = os.environ
        return cls(max_images=int(env.get("FASHION_MAX_TASK_IMAGES", cls.max_images)),
                   max_bytes=int(env.get("FASHION_MAX_TASK_BYTES", cls.max_bytes)),
                   chunk_images=int(env.get("FASHION_TASK_CHUNK_IMAGES", cls.chunk_images)),
                   max_active=int(env.get("FASHION_MAX_ACTIVE_TASKS", cls.max_active)),
                   hold_file=env.get("FASHION_TASK_HOLD_FILE") or None)


@functools.cache
def task_limits() -> TaskLimits:
    """The task limits in force (read from the environment once per process)."""
    return TaskLimits.from_env()


class TaskCancelled(BaseException):
    """Raised by a task that saw its cancel flag; a BaseException so that BentoML records no result."""


@dataclass
class TaskProgress:
    """How far one task got, and how it ended."""

    task_id: str
    status: str = "in_progress"
    done: int = 0
    total: int | None = None
    error: str | None = None
    cancel_requested: bool = False
    created: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.status == "in_progress"

    def end(self, status: str, error: str | None = None) -> None:
        """Record the outcome once; a later call (a canceled task's last chunk) changes nothing."""
        if self.active:
            self.status, self.error, self.finished = status, error, time.time()

    def cancel(self) -> None:
        self.cancel_requested = True
        self.end("canceled")

    def check_cancel(self) -> None:
        """Stop here if cancel was asked for (called before each chunk)."""
        if self.cancel_requested:
            raise TaskCancelled(self.task_id)

    def view(self) -> dict[str, Any]:
        """The progress answer."""
        return {"task_id": self.task_id, "status": self.status, "done": self.done, "total": self.total,
                "error": self.error, "seconds": round((self.finished or time.time()) - self.created, 3)}


class TaskBoard:
    """Every task of this process by id: progress, outcome, cancel flag."""

    def __init__(self, limits: TaskLimits) -> None:
        self.limits = limits
        self.tasks: dict[str, TaskProgress] = {}

    def register(self, task_id: str) -> TaskProgress:
        """The task's entry, created on first sight (at submit, or when the task starts)."""
        if task_id not in self.tasks:
            self.prune()
            self.tasks[task_id] = TaskProgress(task_id)
        return self.tasks[task_id]

    def get(self, task_id: str) -> TaskProgress | None:
        return self.tasks.get(task_id)

    def active(self) -> int:
        return sum(task.active for task in self.tasks.values())

    def prune(self) -> None:
        """Forget finished tasks past BentoML's retention, and the oldest beyond :data:`MAX_REMEMBERED`."""
        cutoff = time.time() - RETENTION_S
        finished = [t for t in self.tasks.values() if not t.active]
        old = {t.task_id for t in finished if t.finished < cutoff}
        old |= {t.task_id for t in finished[:max(0, len(self.tasks) - MAX_REMEMBERED + 1)]}
        for task_id in old:
            del self.tasks[task_id]


async def predict_when_admitted(task: TaskProgress, batcher: MicroBatcher, backend: str,
                                pixels: np.ndarray) -> np.ndarray:
    """Logits for one chunk; while online requests fill the batcher's queue, the task waits its turn."""
    delay = 0.05
    while True:
        try:
            return await batcher.predict(backend, pixels)
        except OverloadedError:
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)
            task.check_cancel()


async def wait_while_held(task: TaskProgress, hold_file: str | None) -> None:
    """The test gate: wait while ``hold_file`` exists, stopping at once if the task is canceled meanwhile."""
    while hold_file is not None and os.path.exists(hold_file):
        task.check_cancel()
        await asyncio.sleep(0.01)


async def classify_in_chunks(task: TaskProgress, batcher: MicroBatcher, backend: str, pixels: np.ndarray,
                             chunk: int, hold_file: str | None = None) -> np.ndarray:
    """``float32[N, 10]`` logits, one chunk at a time through the batcher, counting progress."""
    logits = np.empty((len(pixels), NUM_CLASSES), dtype=np.float32)
    for start in range(0, len(pixels), chunk):
        if start:
            await wait_while_held(task, hold_file)
        task.check_cancel()
        stop = min(start + chunk, len(pixels))
        logits[start:stop] = await predict_when_admitted(task, batcher, backend, pixels[start:stop])
        task.done = stop
    task.check_cancel()
    return logits


def summarize(logits: np.ndarray, labels: np.ndarray | None, temperature: float = 1.0,
              ood_scores: np.ndarray | None = None, ood_threshold: float = 0.0) -> dict[str, Any]:
    """Predicted class ids, names and calibrated confidences (column-wise), plus accuracy and confusion matrix
    with labels; with ``ood_scores``, the "not clothing" columns ``ood_scores`` and ``in_distribution``."""
    probs = softmax(logits, temperature)
    class_ids = probs.argmax(axis=1)
    confidences = probs[np.arange(len(probs)), class_ids].astype(np.float64)
    answer: dict[str, Any] = {
        "count": len(class_ids), "class_ids": class_ids.tolist(), "labels": [CLASS_NAMES[i] for i in class_ids],
        # Six places, as the batch CLI writes them.
        "confidences": np.round(confidences, 6).tolist(), "accuracy": None, "confusion_matrix": None,
    }
    if ood_scores is not None:
        answer["ood_scores"] = np.round(ood_scores, 4).tolist()
        answer["in_distribution"] = (ood_scores >= ood_threshold).tolist()
    if labels is not None:
        answer["accuracy"] = float((class_ids == labels).mean())
        answer["confusion_matrix"] = confusion_matrix(labels, class_ids).tolist()
    return answer


def loaded_version(registry: Any, backend: str) -> str:
    """The model version ``backend`` serves, or 400 when this server has not loaded it."""
    try:
        return registry.get(backend).manifest["version"]
    except KeyError as exc:
        raise RequestError(str(exc.args[0]), 400) from None


def failure(ctx: bentoml.Context, task: TaskProgress, status: int) -> dict[str, Any]:
    """A failed task's answer; its status (BentoML takes it from the context) marks the task failed."""
    ctx.response.status_code = status
    return {"error": task.error, "task_id": task.task_id}


async def run_dataset_task(board: TaskBoard, batcher: MicroBatcher, registry: Any, ctx: bentoml.Context,
                           upload: Upload) -> Response | dict[str, Any]:
    """Read, classify and summarize one uploaded dataset; the body of the ``classify_dataset`` task.

    Returns:
        The result (JSON); or ``{"error", "task_id"}`` with the response status set to 4xx (the upload) or 500
        (the model), which makes BentoML mark the task failed. Raises :class:`TaskCancelled` when canceled.
    """
    # BentoML puts the id on the request state of the submit (or retry) call; a direct POST has none.
    task = board.register(getattr(ctx.request.state, "task_id", None) or f"direct-{uuid.uuid4().hex}")
    started = time.perf_counter()
    try:
        task.check_cancel()
        dataset = await anyio.to_thread.run_sync(read_dataset, upload, board.limits.max_images)
        backend = parse_backend(dataset.backend)
        version = loaded_version(registry, backend)
        task.total = len(dataset.pixels)
        logits = await classify_in_chunks(task, batcher, backend, dataset.pixels, board.limits.chunk_images,
                                          board.limits.hold_file)
    except RequestError as exc:
        task.end("failed", str(exc))
        return failure(ctx, task, exc.error_code.value)
    except Exception as exc:  # a model failure ends this task, never the server
        log.exception("task %s failed", task.task_id)
        task.end("failed", f"the model failed: {type(exc).__name__}: {exc}")
        return failure(ctx, task, 500)
    except asyncio.CancelledError:
        task.end("failed", "interrupted: the server is stopping")
        raise
    seconds = time.perf_counter() - started
    header = {"task_id": task.task_id, "backend": backend, "model_version": version, "seconds": round(seconds, 3)}
    # The submit's Accept, checked there (TaskMiddleware.submit): JSON, or the compact rows (service.answers).
    answer = negotiate(ctx.request.headers.get("accept"))
    # 100,000 answers are megabytes of JSON: built in a thread, not on the event loop that serves online requests.
    loaded = registry.get(backend)
    scores = registry.ood_scores(backend, logits, dataset.pixels)
    threshold = loaded.detector.threshold if loaded.detector else 0.0
    result = await anyio.to_thread.run_sync(render_result, header, logits, dataset.labels, answer,
                                            loaded.temperature, scores, threshold)
    task.check_cancel()  # canceled while it rendered: canceled it stays
    task.end("completed")
    log.info("task %s: %d images on %s in %.2f s", task.task_id, task.total, backend, seconds)
    return result


def render_result(header: dict[str, Any], logits: np.ndarray, labels: np.ndarray | None,
                  answer: str = "application/json", temperature: float = 1.0, ood_scores: np.ndarray | None = None,
                  ood_threshold: float = 0.0) -> Response:
    """The result: JSON (``header`` then :func:`summarize`, calibrated, with the "not clothing" columns), or with
    ``answer`` :data:`~service.answers.NPY` the compact rows, ``header``'s facts (and the accuracy, given labels)
    in ``X-Fashion-*`` headers."""
    if answer != NPY:
        body = {**header, **summarize(logits, labels, temperature, ood_scores, ood_threshold)}
        return Response(json.dumps(body).encode(), media_type="application/json")
    records = answer_records(softmax(logits, temperature))
    facts = {"X-Fashion-Backend": header["backend"], "X-Fashion-Model-Version": header["model_version"],
             "X-Fashion-Task-Id": header["task_id"], "X-Fashion-Seconds": str(header["seconds"])}
    if labels is not None:
        facts["X-Fashion-Accuracy"] = repr(float((records["class_id"] == labels).mean()))
    return Response(npy_body(records), media_type=NPY, headers={**facts, "Vary": "Accept"})


class DatasetUpload(bentoml.IODescriptor):
    """A dataset file: the raw body, or a multipart form (``images``, optional ``labels`` and ``backend``)."""

    images: Path = Field(description="uint8 N x 28 x 28 images: .npy, .npz (images and optional labels) or an IDX "
                                     "images file, raw or gzipped. At most FASHION_MAX_TASK_IMAGES images "
                                     "(default 100,000).")
    # Declared so that the schema (and BentoML's client, which builds requests from it) knows the form's
    # other fields; the task reads all three from the upload itself (service.datasets.split_upload).
    # ``Path`` with a None default rather than ``Path | None``: BentoML's client sends a field as a file only
    # when its schema says "file" at its top, not inside an anyOf with null.
    labels: Path = Field(None, description="optional true labels (IDX or .npy, raw or gzipped): the "
                                                  "result then adds accuracy and a confusion matrix")
    backend: str | None = Field(None, description=f"one of {sorted(BACKENDS)} (form field or ?backend=); "
                                                  "default: the fastest")

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> DatasetUpload:
        # Nothing is checked here: whatever can be wrong with the upload is found by the task, so that it
        # ends failed with the reason (a refusal at this point would reach the client only through `get`).
        upload = getattr(request.state, UPLOAD_STATE, None)  # put there at submit by TaskMiddleware
        if upload is None:  # POST /classify_dataset, run while the client waits: the body is the upload
            upload = Upload(await read_body(request, task_limits().max_bytes), request.headers.get("content-type", ""),
                            request.query_params.get("backend"))
        return cls.model_construct(images=upload)


def current_board() -> TaskBoard | None:
    """The service's task board; ``None`` before the service exists."""
    try:
        return getattr(bentoml.get_current_service(), "tasks", None)
    except BentoMLException:
        return None


async def reply(send: Send, status: int, payload: dict[str, Any]) -> None:
    """A JSON answer from the middleware."""
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_limited(receive: Receive, declared: str | None, limit: int) -> bytes | None:
    """The request body, refused (413) past ``limit`` bytes; ``None`` when the client went away."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {int(declared):,} bytes is over the task limit of {limit:,} "
                           "(FASHION_MAX_TASK_BYTES)", 413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            raise RequestError(f"request body is over the task limit of {limit:,} bytes (FASHION_MAX_TASK_BYTES)",
                               413)
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then listens to the client again (for its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


class TaskMiddleware:
    """Limits on submit, the progress route, a cancel that works (see the module docstring).

    BentoML adds it with ``add_asgi_middleware`` (service.service), inside admission control.
    """

    def __init__(self, app: Any, route: str = TASK_ROUTE) -> None:
        self.app = app
        self.routes = {("POST", f"{route}/submit"): self.submit, ("POST", f"{route}/retry"): self.retry,
                       ("GET", f"{route}/progress"): self.progress, ("PUT", f"{route}/cancel"): self.cancel}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        handler = self.routes.get((scope.get("method"), scope.get("path"))) if scope["type"] == "http" else None
        board = current_board() if handler else None
        if board is None:
            return await self.app(scope, receive, send)
        await handler(board, scope, receive, send)

    async def submit(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        limits = board.limits
        if board.active() >= limits.max_active:
            return await reply(send, 429, {"error": f"{limits.max_active} tasks are in progress "
                                                    "(FASHION_MAX_ACTIVE_TASKS); retry when one has ended"})
        request = Request(scope)
        try:
            body = await read_limited(receive, request.headers.get("content-length"), limits.max_bytes)
            if body is None:
                return None
            if not body:
                raise RequestError("empty request body: send a dataset file", 400)
            negotiate(request.headers.get("accept"))  # 406 now, not a task that fails at its end
            upload = Upload(body, request.headers.get("content-type", ""), request.query_params.get("backend"))
            count = await anyio.to_thread.run_sync(declared_count, upload)
            if count is not None and count > limits.max_images:
                raise RequestError(f"the dataset holds {count:,} images; a task takes at most {limits.max_images:,} "
                                   "(FASHION_MAX_TASK_IMAGES)", 413)
        except RequestError as exc:
            return await reply(send, exc.error_code.value, {"error": str(exc)})
        # BentoML stores the request it is given, for `retry`: base64 in SQLite for 24 hours, encoded on the
        # event loop at submit and decoded again by every `get` (a quarter of a second each for 50 MB, while
        # no online request is answered). So it gets the headers and an empty body; the task takes the
        # checked upload from the request's state, which the submit request and its task share.
        scope.setdefault("state", {})[UPLOAD_STATE] = upload
        await self.run_task_request(board, scope, replay(b"", receive), send)

    async def retry(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await reply(send, 409, {"error": "a dataset task keeps no copy of its upload, so it cannot be retried; "
                                         "submit the file again"})

    async def run_task_request(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Pass a submit on to BentoML, note the task id it answers, and outlive the task it then runs."""
        answer = bytearray()
        task: list[TaskProgress] = []

        async def note_task_id(message: Message) -> None:
            if message["type"] == "http.response.body" and not task:
                answer.extend(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        task_id = json.loads(answer).get("task_id")
                    except (ValueError, AttributeError):
                        task_id = None
                    if isinstance(task_id, str):  # registered before BentoML starts the task, after this message
                        task.append(board.register(task_id))
            await send(message)

        try:
            await self.app(scope, receive, note_task_id)
        except TaskCancelled:
            pass  # the task stopped at its flag; BentoML's row says canceled, as it should
        finally:
            if task:
                task[0].end("failed", "the task ended without a result; see /classify_dataset/get")

    @staticmethod
    async def find(board: TaskBoard, scope: dict[str, Any], send: Send):
        """The task named by ``?task_id=``; ``None`` once 400 or 404 has been answered."""
        task_id = Request(scope).query_params.get("task_id")
        task = board.get(task_id) if task_id else None
        if task is None:
            await reply(send, 400 if not task_id else 404,
                        {"error": "task_id is required" if not task_id else "task_id not found"})
        return task

    async def progress(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if (task := await self.find(board, scope, send)) is not None:
            await reply(send, 200, task.view())

    async def cancel(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if (task := await self.find(board, scope, send)) is None:
            return None
        if not task.active:
            return await reply(send, 409, {"error": f"the task has already ended ({task.status})", **task.view()})
        task.cancel()

        async def drop(message: Message) -> None:
            pass  # BentoML's answer: "task cancellation is not supported in local development server"

        await self.app(scope, receive, drop)  # BentoML marks its row canceled
        await reply(send, 200, task.view())
