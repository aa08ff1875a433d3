"""Dataset tasks in-process (service.task_runner, service.datasets): a model failure mid-task, bounded reading."""

from __future__ import annotations

import asyncio
import gzip

import bentoml
import numpy as np
import pytest
from starlette.requests import Request

from fashion.manifest import read_manifest
from service.batcher import MicroBatcher, Outputs
from service.config import ServiceConfig, TaskLimits
from service.datasets import Upload, read_dataset
from service.inputs import RequestError
from service.registry import ModelRegistry
from service.task_board import TaskBoard
from service.task_runner import run_dataset_task
from tests.helpers import npy, npz


def test_a_model_failure_ends_the_task_failed_with_the_reason(exported, dataset):
    registry = ModelRegistry(ServiceConfig(backends=("onnx-torch",), device="cpu", threads=1))
    registry.load_all({read_manifest(exported["torch"])["name"]: exported["torch"]})
    calls = []

    def failing_third_call(backend: str, pixels: np.ndarray, score: bool = False) -> Outputs:
        calls.append(len(pixels))
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return registry.run_batch(backend, pixels, score)

    board = TaskBoard(TaskLimits(chunk_images=100))
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""})
    request.state.task_id = "model-error"
    ctx = bentoml.Context()

    async def run() -> tuple[dict, int]:
        batcher = MicroBatcher(failing_third_call)
        upload = Upload(npy(dataset.test_images[:1000]), "application/x-npy")
        try:
            with ctx.in_request(request):
                answer = await run_dataset_task(board, batcher, registry, ctx, upload)
                return answer, ctx.response.status_code  # what BentoML answers, and records as failed
        finally:
            batcher.close()

    answer, status = asyncio.run(run())
    assert status == 500
    assert answer == {"error": "the model failed: RuntimeError: device lost", "task_id": "model-error"}
    progress = board.get("model-error").view()
    assert progress["status"] == "failed" and progress["done"] == 200 and progress["total"] == 1000


@pytest.mark.parametrize(("upload", "status", "reason"), [
    # A gzip bomb: 100 MB of zeros in about 100 kB; refused after inflating no more than the limit allows.
    (gzip.compress(bytes(16) + bytes(100_000_000)), 413, "decompresses to more than 1,000 images"),
    (npz(images=np.zeros((1001, 28, 28), np.uint8)), 413, "1,001 images; a task takes at most 1,000"),
    (npz(x=np.zeros((3, 28, 28), np.uint8), y=np.zeros(3, np.int64)), None, None),
    (npz(labels=np.zeros(3, np.int64)), 422, "no 'images' (or 'x') array"),
])
def test_reading_uploads_is_bounded(upload, status, reason):
    if status is None:
        dataset = read_dataset(Upload(upload, "application/octet-stream"), 1000)
        assert dataset.pixels.shape == (3, 28, 28) and dataset.labels.tolist() == [0, 0, 0]
        return
    with pytest.raises(RequestError) as caught:
        read_dataset(Upload(upload, "application/octet-stream"), 1000)
    assert caught.value.error_code.value == status and reason in str(caught.value)
