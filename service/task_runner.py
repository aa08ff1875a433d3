"""The body of a dataset task (``/classify_dataset``): read the upload, classify it in chunks, summarize.

The images go through the service's one batcher in chunks of ``FASHION_TASK_CHUNK_IMAGES``, one
chunk queued at a time, so an online request waits behind one chunk's model call at most. A task
that fails (unreadable file, wrong shape, unknown backend, model error) ends ``failed``, its reason
in ``get``'s body and in ``progress``; nothing leaves it ``in_progress``. How BentoML runs the task,
and what this service changes about submit, retry and cancel, is service.task_routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import bentoml
import numpy as np
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from fashion.backends import BACKENDS
from fashion.contract import CLASS_NAMES, NUM_CLASSES, answer_records, softmax
from fashion.metrics import confusion_matrix
from service.answers import NPY, negotiate, npy_body
from service.batcher import MicroBatcher, OverloadedError
from service.datasets import Dataset, Upload, read_dataset
from service.inputs import RequestError, parse_backend, read_body, serving
from service.registry import ModelRegistry
from service.task_board import UPLOAD_STATE, TaskBoard, TaskProgress

log = logging.getLogger("bentoml.fashion_serve")


async def predict_when_admitted(task: TaskProgress, batcher: MicroBatcher, backend: str,
                                pixels: np.ndarray) -> np.ndarray:
    """Logits for one chunk; while online requests fill the batcher's queue, the task waits its turn."""
    delay = 0.05
    while True:
        try:
            return (await batcher.predict(backend, pixels)).logits
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


def loaded_version(registry: ModelRegistry, backend: str) -> str:
    """The model version ``backend`` serves, or 400 when this server has not loaded it."""
    try:
        return registry.get(backend).manifest["version"]
    except KeyError as exc:
        raise RequestError(str(exc.args[0]), 400) from None


def failure(ctx: bentoml.Context, task: TaskProgress, status: int) -> dict[str, Any]:
    """A failed task's answer; its status (BentoML takes it from the context) marks the task failed."""
    ctx.response.status_code = status
    return {"error": task.error, "task_id": task.task_id}


async def run_dataset_task(board: TaskBoard, batcher: MicroBatcher, registry: ModelRegistry, ctx: bentoml.Context,
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
        backend = parse_backend(dataset.backend, registry.config)
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
    # The submit's Accept, checked there (service.task_routes): JSON, or the compact rows (service.answers).
    answer = negotiate(ctx.request.headers.get("accept"))
    # 100,000 answers are megabytes of JSON, and their "not clothing" scores a pass over every pixel: both in a
    # thread, not on the event loop that serves online requests.
    result = await anyio.to_thread.run_sync(answer_task, registry, backend, header, logits, dataset, answer)
    task.check_cancel()  # canceled while it rendered: canceled it stays
    task.end("completed")
    log.info("task %s: %d images on %s in %.2f s", task.task_id, task.total, backend, seconds)
    return result


def answer_task(registry: ModelRegistry, backend: str, header: dict[str, Any], logits: np.ndarray,
                dataset: Dataset, answer: str) -> Response:
    """The task's result in the negotiated ``answer`` type. The compact rows carry no "not clothing" columns
    (as on the native routes), so their scores are computed only for a JSON answer."""
    loaded = registry.get(backend)
    scores = registry.ood_scores(backend, logits, dataset.pixels) if answer != NPY else None
    threshold = loaded.detector.threshold if loaded.detector else 0.0
    return render_result(header, logits, dataset.labels, answer, loaded.temperature, scores, threshold)


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
        upload = getattr(request.state, UPLOAD_STATE, None)  # put there at submit by service.task_routes
        if upload is None:  # POST /classify_dataset, run while the client waits: the body is the upload
            upload = Upload(await read_body(request, serving(request).config.tasks.max_bytes),
                            request.headers.get("content-type", ""), request.query_params.get("backend"))
        return cls.model_construct(images=upload)
