"""Batching for every endpoint: whatever arrived while the model was busy runs as the next batch.

Requests queue as jobs (a backend and ``uint8[k, 28, 28]`` pixels). One worker
coroutine takes the queued jobs, up to :attr:`MicroBatcher.max_batch_images`
images, runs them in one model thread and hands each job its slice of the
answers. There is no timer: an idle server answers a lone request at once,
and under load the batches grow by themselves (Triton's dynamic batcher with
no queue delay works the same way).

A small job that finds the server otherwise idle (``alone()``: no other request
in progress and the same client connection as the last request, see
service.serving.InFlight; nothing queued, no model call running) runs on the event loop
itself: the hop to the model thread and back costs more than the model call of
one image (docs/serving.md, "A lone request skips the model thread"). Model calls
stay one at a time: the loop is blocked while it runs one, so no batch can start.

Why not BentoML's adaptive batcher (``batchable=True``): it learns how long to
hold requests from the waits it has seen. After a burst it keeps holding a lone
request for tens of milliseconds, and every held request feeds that wait back
into its estimate, so latency stayed high for minutes after an overload here
(docs/reliability.md). It also answers 503 without ``Retry-After``.

The queue is bounded (:class:`OverloadedError`, answered 503 with ``Retry-After``),
a job that has waited longer than the wait budget is refused the same way when its turn
comes (its client should retry rather than wait on), and a job whose client has gone away
is dropped before it reaches the model.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

# (backend, uint8[n, 28, 28] pixels, score) -> that batch's Outputs; runs in the model thread.
RunBatch = Callable[[str, np.ndarray, bool], "Outputs"]
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class Outputs:
    """What one model call answers: ``float32[n, 10]`` logits, the calibrated probabilities computed in the same
    thread (``None`` from a stand-in model), and the "not clothing" scores (``float32[n]``, fashion.ood) when the
    batch was scored and the model has a detector. Rows slice together."""

    logits: np.ndarray
    scores: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    # Seconds the job waited for its model call, and the call's own seconds (the statistics of service.stats).
    queue_s: float = 0.0
    compute_s: float = 0.0
    # Which model call computed the rows (a count per batcher): requests of one call share it.
    execution: int = 0

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, rows: slice) -> Outputs:
        return Outputs(self.logits[rows], None if self.scores is None else self.scores[rows],
                       None if self.probabilities is None else self.probabilities[rows], self.queue_s,
                       self.compute_s, self.execution)


class OverloadedError(RuntimeError):
    """The queue is full, or the request waited past the budget; ``reason`` says which (service.telemetry counts
    refusals by it)."""

    def __init__(self, message: str, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Job:
    """One request's images, waiting for the model."""

    backend: str
    pixels: np.ndarray
    future: asyncio.Future
    enqueued: float
    score: bool = False


@functools.cache
def metrics() -> dict[str, Any]:
    """Prometheus series for the batcher, created once per process (BentoML serves them on /metrics)."""
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "batch": Histogram("fashion_batch_size", "Images per model call", buckets=BATCH_BUCKETS),
        "queued_images": Gauge("fashion_queued_images", "Images waiting for a model call",
                               multiprocess_mode="livesum"),
        "queued_requests": Gauge("fashion_queued_requests", "Requests waiting for a model call",
                                 multiprocess_mode="livesum"),
        "wait": Histogram("fashion_queue_wait_seconds", "Time from queueing to the model call",
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
        "refused": Counter("fashion_queue_refused", "Requests refused: queue full or wait budget spent"),
    }


class MicroBatcher:
    """Queues prediction jobs and runs them in batches on one model thread."""

    def __init__(self, run_batch: RunBatch, max_batch_images: int = 256, max_queued_images: int = 16384,
                 hold_file: str | None = None, max_wait_s: float | None = None,
                 clock: Callable[[], float] = time.perf_counter, alone: Callable[[], bool] | None = None,
                 inline_images: int = 0) -> None:
        """
        Args:
            run_batch: ``(backend, uint8[n, 28, 28], score) ->`` :class:`Outputs`, scored when ``score``;
                runs in the model thread.
            max_batch_images: images per model call; one larger job still runs, alone.
            max_queued_images: images allowed to wait; past this, :meth:`predict` raises OverloadedError.
            hold_file: tests only: no model call starts while this file exists (see :meth:`_wait_while_held`).
            max_wait_s: a job that has waited longer than this when its turn comes fails with
                OverloadedError instead of running (``None``: no limit).
            clock: seconds, monotonic (tests pass their own).
            alone: whether the calling request is the only one in progress (service.serving.InFlight);
                ``None``: never run on the event loop.
            inline_images: a job of at most this many images, when ``alone()`` and the batcher is idle,
                runs on the event loop instead of the model thread (0: never).
        """
        self.run_batch = run_batch
        self.hold_file = hold_file
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.max_batch_images = max_batch_images
        self.max_queued_images = max_queued_images
        self.queue: deque[Job] = deque()
        self.queued_images = 0
        self.alone = alone
        self.inline_images = inline_images
        self.running = False  # a batch is in the model thread
        self.executions = 0  # model calls so far (Outputs.execution)
        # One thread runs every model call, so runtimes may use all cores without oversubscribing them.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        metrics()  # the series exist (at zero) from the start, so /metrics always shows them

    async def predict(self, backend: str, pixels: np.ndarray, score: bool = False) -> Outputs:
        """Logits for ``pixels`` in input order, once their batch has run; with ``score``, their "not clothing"
        scores too, computed for the whole batch in the model thread (none of the event loop's time).

        Raises:
            OverloadedError: the queue already holds :attr:`max_queued_images` images.
        """
        if self.queued_images and self.queued_images + len(pixels) > self.max_queued_images:
            metrics()["refused"].inc()
            raise OverloadedError(f"{self.queued_images:,} images are already queued; try again shortly")
        if self._can_run_inline(len(pixels)):
            return self._run_inline(backend, pixels, score)
        self._start()
        job = Job(backend, pixels, asyncio.get_running_loop().create_future(), self.clock(), score)
        self.queue.append(job)
        self.queued_images += len(pixels)
        self._count_queued()
        self._wake.set()
        # A cancelled wait (client gone, server timeout) cancels the job; the worker then skips it.
        return await job.future

    def _can_run_inline(self, images: int) -> bool:
        """Idle and small: nothing is queued or running, no other request is in progress, no test hold."""
        return (images <= self.inline_images and not self.queue and not self.running
                and self.alone is not None and self.alone()
                and (self.hold_file is None or not os.path.exists(self.hold_file)))

    def _run_inline(self, backend: str, pixels: np.ndarray, score: bool) -> Outputs:
        """The model call on the event loop, counted in /metrics like any batch (one job, no wait)."""
        series = metrics()
        series["wait"].observe(0.0)
        series["batch"].observe(len(pixels))
        start = self.clock()
        outputs = self.run_batch(backend, pixels, score)
        self.executions += 1
        return timed(outputs, compute_s=self.clock() - start, execution=self.executions)

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            # A context of its own: the worker serves every request, so it must not keep the first one's (its
            # request id, service.telemetry).
            self._worker = asyncio.get_running_loop().create_task(self._serve(), name="micro-batcher",
                                                                  context=contextvars.Context())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.hold_file is not None:
                await self._wait_while_held()
                for job in self.queue:  # a test's hold is not queueing: the wait budget starts now
                    job.enqueued = self.clock()
            while self.queue:
                jobs = self._take()
                if jobs:
                    await self._run(loop, jobs)

    async def _wait_while_held(self) -> None:
        """The test gate: hold every model call while :attr:`hold_file` exists.

        Meanwhile ``<hold_file>.queued`` holds the number of queued jobs, so a test knows when its burst
        is all queued before it lifts the hold (then the burst runs as merged calls, deterministically).
        """
        written = -1
        while os.path.exists(self.hold_file):
            if len(self.queue) != written:
                written = len(self.queue)
                with open(f"{self.hold_file}.queued.tmp", "w") as out:
                    out.write(str(written))
                os.replace(f"{self.hold_file}.queued.tmp", f"{self.hold_file}.queued")
            await asyncio.sleep(0.01)

    def _take(self) -> list[Job]:
        """Queued jobs, oldest first, up to the batch limit (the first job always fits)."""
        jobs: list[Job] = []
        images = 0
        oldest = self.clock() - self.max_wait_s if self.max_wait_s is not None else None
        while self.queue and (not jobs or images + len(self.queue[0].pixels) <= self.max_batch_images):
            job = self.queue.popleft()
            self.queued_images -= len(job.pixels)
            if job.future.done():
                continue
            if oldest is not None and job.enqueued < oldest:
                metrics()["refused"].inc()
                job.future.set_exception(OverloadedError(
                    f"waited over the {self.max_wait_s * 1000:.0f} ms budget for the model; try again shortly",
                    "wait_budget"))
                continue
            jobs.append(job)
            images += len(job.pixels)
        self._count_queued()
        return jobs

    def _count_queued(self) -> None:
        series = metrics()
        series["queued_images"].set(self.queued_images)
        series["queued_requests"].set(len(self.queue))

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
        now = self.clock()
        series = metrics()
        for job in jobs:
            series["wait"].observe(now - job.enqueued)
        series["batch"].observe(sum(len(job.pixels) for job in jobs))
        self.running = True
        try:
            answers = await loop.run_in_executor(self._executor, run_jobs, self.run_batch, jobs)
            compute_s = self.clock() - now
            self.executions += 1
        except Exception as exc:  # a model failure fails this batch's requests, never the worker
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self.running = False
        for job, answer in zip(jobs, answers, strict=True):
            if not job.future.done():
                job.future.set_result(timed(answer, queue_s=now - job.enqueued, compute_s=compute_s,
                                            execution=self.executions))

    def close(self) -> None:
        """Stop the worker; queued requests are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
        for job in self.queue:
            job.future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def timed(answer: Outputs, **times: float | int) -> Outputs:
    """``answer`` with its wait, model call and call number (Outputs' timing fields); a stand-in model's bare
    logits (the batcher's unit tests) pass unchanged."""
    return dataclasses.replace(answer, **times) if isinstance(answer, Outputs) else answer


def run_jobs(run_batch: RunBatch, jobs: list[Job]) -> list[Outputs]:
    """Run ``jobs`` with one model call per backend, scored when any of its jobs asks; each job's rows, in job
    order (a job that did not ask may get scores it ignores: scoring a batch once is cheaper than splitting it)."""
    answers: list[Outputs] = [Outputs(np.empty((0, 0), np.float32))] * len(jobs)
    for backend in dict.fromkeys(job.backend for job in jobs):
        group = [i for i, job in enumerate(jobs) if job.backend == backend]
        pixels = np.concatenate([jobs[i].pixels for i in group]) if len(group) > 1 else jobs[group[0]].pixels
        results = run_batch(backend, pixels, any(jobs[i].score for i in group))
        start = 0
        for i in group:
            count = len(jobs[i].pixels)
            answers[i] = results[start:start + count]
            start += count
    return answers
