"""The batcher on its own: merging, order, per-backend grouping, cancellation, overload, failures.

Each scenario orders its steps on events (the model call has started, the batcher has queued the requests), never
on sleeps: see :func:`model_busy` and :func:`queued`.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import Job, MicroBatcher, Outputs, OverloadedError, run_jobs
from tests.helpers import images

WAIT_S = 5.0  # a hang guard, not a timing bound


class SlowModel:
    """Logits that encode each image's first pixel; every call waits on a gate, and is recorded.

    ``entered`` is set once a call has started (the model is then busy until the gate opens).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, backend: str, pixels: np.ndarray, score: bool = False) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never opened the model's gate"
        self.calls.append((backend, len(pixels)))
        logits = np.zeros((len(pixels), 10), np.float32)
        logits[:, 0] = pixels[:, 0, 0]
        return logits


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, WAIT_S))


async def model_busy(model: SlowModel) -> None:
    """Wait (off the event loop) until the model thread has started a call."""
    assert await asyncio.to_thread(model.entered.wait, WAIT_S), "the first request never reached the model"


async def queued(batcher: MicroBatcher, jobs: int) -> None:
    """Let the event loop run until ``jobs`` requests wait in the batcher's queue."""
    while len(batcher.queue) < jobs:
        await asyncio.sleep(0)  # one turn of the loop: the new tasks run up to their wait


def test_requests_arriving_while_the_model_is_busy_share_one_call_per_backend():
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch_images=256)

    async def scenario():
        first = asyncio.create_task(batcher.predict("a", images(1)))
        await model_busy(model)  # the model is now busy with the first request (gate closed)
        rest = [asyncio.create_task(batcher.predict(backend, images(i, i + 100)))
                for i, backend in zip(range(2, 8), "abab" "ab", strict=True)]
        await queued(batcher, 6)
        model.gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = run(scenario())
    assert first[:, 0].tolist() == [1]
    assert [r[:, 0].tolist() for r in rest] == [[i, i + 100] for i in range(2, 8)]  # each gets its own rows
    assert model.calls == [("a", 1), ("a", 6), ("b", 6)]  # six queued requests, one call per backend


def test_a_lone_request_is_not_held_back():
    model = SlowModel()
    model.gate.set()
    batcher = MicroBatcher(model)
    answers = run(batcher.predict("a", images(7)))
    assert answers[:, 0].tolist() == [7] and model.calls == [("a", 1)]


def test_batches_stop_at_the_image_limit_but_a_large_request_runs_alone():
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch_images=4)

    async def scenario():
        first = asyncio.create_task(batcher.predict("a", images(0)))
        await model_busy(model)
        tasks = [asyncio.create_task(batcher.predict("a", images(*[i] * size))) for i, size in
                 enumerate((3, 2, 9, 1), start=1)]
        await queued(batcher, 4)
        model.gate.set()
        await first
        return await asyncio.gather(*tasks)

    answers = run(scenario())
    assert [len(a) for a in answers] == [3, 2, 9, 1]
    assert [n for _, n in model.calls] == [1, 3, 2, 9, 1]


def test_a_cancelled_request_never_reaches_the_model():
    model = SlowModel()
    batcher = MicroBatcher(model)

    async def scenario():
        first = asyncio.create_task(batcher.predict("a", images(1)))
        await model_busy(model)
        gone = asyncio.create_task(batcher.predict("a", images(2, 3)))
        kept = asyncio.create_task(batcher.predict("a", images(4)))
        await queued(batcher, 2)
        gone.cancel()  # the client went away
        model.gate.set()
        await first
        return await kept

    assert run(scenario())[:, 0].tolist() == [4]
    assert model.calls == [("a", 1), ("a", 1)]


def test_a_full_queue_refuses_at_once_and_a_model_error_fails_only_its_batch():
    model = SlowModel()
    batcher = MicroBatcher(model, max_queued_images=3)

    async def scenario():
        first = asyncio.create_task(batcher.predict("a", images(1)))
        await model_busy(model)
        waiting = asyncio.create_task(batcher.predict("a", images(2, 3)))
        await queued(batcher, 1)
        with pytest.raises(OverloadedError):
            await batcher.predict("a", images(4, 5))
        model.gate.set()
        return await first, await waiting

    first, waiting = run(scenario())
    assert first[:, 0].tolist() == [1] and waiting[:, 0].tolist() == [2, 3]

    def broken(backend: str, pixels: np.ndarray, score: bool = False) -> np.ndarray:
        raise RuntimeError("model failed")

    failing = MicroBatcher(broken)

    async def after_failure():
        with pytest.raises(RuntimeError, match="model failed"):
            await failing.predict("a", images(1))
        failing.run_batch = SlowModel()
        failing.run_batch.gate.set()
        return await failing.predict("a", images(9))  # the worker survived

    assert run(after_failure())[:, 0].tolist() == [9]


def test_a_batch_is_scored_once_when_any_of_its_requests_asks_and_each_gets_its_own_rows():
    calls = []

    def model(backend: str, pixels: np.ndarray, score: bool = False) -> Outputs:
        calls.append((backend, len(pixels), score))
        firsts = pixels[:, 0, 0].astype(np.float32)
        return Outputs(np.repeat(firsts[:, None], 10, axis=1), firsts / 100 if score else None)

    jobs = [Job("a", images(1), None, 0.0), Job("a", images(2, 3), None, 0.0, score=True),
            Job("b", images(4), None, 0.0)]
    answers = run_jobs(model, jobs)
    assert calls == [("a", 3, True), ("b", 1, False)]  # one call per backend; only a's batch was scored
    assert [a.logits[:, 0].tolist() for a in answers] == [[1], [2, 3], [4]]
    assert answers[1].scores.tolist() == pytest.approx([0.02, 0.03]) and answers[2].scores is None
