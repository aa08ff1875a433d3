"""The prediction log: a sampled record of what the service answered, opt-in (docs/observability.md).

With ``FASHION_PREDICTION_LOG`` set to a file, a share ``FASHION_PREDICTION_LOG_SAMPLE`` of the answered requests
(0 to 1, default 0.01) is written to it as JSON lines, one per image: request id, time, backend, version, class,
confidence and "not clothing" score (``null`` when the answer was not scored); the 28 x 28 pixels too with
``FASHION_PREDICTION_LOG_PIXELS=1``. The file is rotated by size (``FASHION_PREDICTION_LOG_MAX_BYTES``, keeping
``FASHION_PREDICTION_LOG_BACKUPS`` old files).

The answer path never waits for the log: a sampled request costs one append to an unbounded queue, and a writer
thread formats and writes. Nothing sampled is dropped either: the queue has no limit, so a disk slower than the
traffic shows as a growing ``fashion_prediction_log_backlog_records`` (and memory), never as a lost record or a
slower answer; on shutdown the writer empties the queue before it stops. A bounded queue would have to drop or
block when full, and either breaks a promise (a record lost, or an answer held up).

Why not ``bentoml.monitor``: its default monitor writes each record through Python logging in the request's own
task (file I/O on the answer path), rotates by day rather than by size, has no sampling, and stamps BentoML's
own request number rather than the request id the answer carries (service.telemetry).
"""

from __future__ import annotations

import functools
import json
import logging.handlers
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fashion.contract import CLASS_NAMES, softmax

WRITE_BATCH = 512  # records taken off the queue per write: one write call for many lines


@dataclass(frozen=True)
class PredictionLogConfig:
    """Where and how much to log (built from ``FASHION_PREDICTION_LOG*`` by service.config)."""

    path: str
    sample: float = 0.01
    pixels: bool = False
    max_bytes: int = 64 * 1024 * 1024
    backups: int = 5
    seed: int | None = None  # tests: a seeded sampler

    def __post_init__(self) -> None:
        if not 0 <= self.sample <= 1:
            raise ValueError(f"FASHION_PREDICTION_LOG_SAMPLE must be from 0 to 1, not {self.sample}")
        if self.max_bytes < 1 or self.backups < 0:
            raise ValueError("FASHION_PREDICTION_LOG_MAX_BYTES must be positive and the backups 0 or more")


@functools.cache
def metrics() -> dict[str, Any]:
    """Prometheus series for the prediction log, created once per process (BentoML serves them on /metrics)."""
    from prometheus_client import Counter, Gauge

    return {
        "written": Counter("fashion_prediction_log_records", "Records written to the prediction log"),
        "backlog": Gauge("fashion_prediction_log_backlog_records", "Sampled records not yet written",
                         multiprocess_mode="livesum"),
    }


class PredictionLog:
    """The sampler (on the answer path) and the writer thread."""

    def __init__(self, config: PredictionLogConfig) -> None:
        self.config = config
        self.random = random.Random(config.seed).random
        # Records; a threading.Event to set once everything before it is written (flush); None to stop.
        self.queue: queue.SimpleQueue[tuple[Any, ...] | threading.Event | None] = queue.SimpleQueue()
        self.handler = logging.handlers.RotatingFileHandler(config.path, maxBytes=config.max_bytes,
                                                            backupCount=config.backups, encoding="utf-8")
        self.sampled = 0  # requests sampled (the writer's count of what it wrote is in /metrics)
        self.thread = threading.Thread(target=self.write_all, name="prediction-log", daemon=True)
        self.thread.start()

    def record(self, request_id: str, backend: Any, logits: np.ndarray, scores: np.ndarray | None,
               pixels: np.ndarray | None) -> None:
        """The answer path's cost: one random draw; for a sampled request, one append to the queue."""
        if self.random() < self.config.sample:
            self.sampled += 1
            self.queue.put((request_id, time.time(), backend, logits, scores,
                            pixels if self.config.pixels else None))

    def write_all(self) -> None:
        """The writer thread: take queued records, many at a time, until :meth:`close` queues the end."""
        series = metrics()
        while True:
            items = [self.queue.get()]
            while len(items) < WRITE_BATCH and not self.queue.empty():
                items.append(self.queue.get())
            done = items[-1] is None
            lines = [line for item in items if isinstance(item, tuple) for line in format_records(*item)]
            for line in lines:
                self.handler.emit(logging.makeLogRecord({"msg": line}))
            self.handler.flush()
            series["written"].inc(len(lines))
            series["backlog"].set(self.queue.qsize())
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if done:
                self.handler.close()
                return

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every record queued so far is written; False if that took over ``timeout_s``."""
        written = threading.Event()
        self.queue.put(written)
        return written.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued so far, then stop the writer (waits up to ``timeout_s``)."""
        self.queue.put(None)
        self.thread.join(timeout_s)


def format_records(request_id: str, at: float, backend: Any, logits: np.ndarray, scores: np.ndarray | None,
                   pixels: np.ndarray | None) -> list[str]:
    """One JSON line per image of a sampled request."""
    probabilities = softmax(logits, backend.temperature)
    classes = probabilities.argmax(axis=1)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"
    lines = []
    for i, class_id in enumerate(classes):
        record = {"request_id": request_id, "time": stamp, "image": i, "backend": backend.name,
                  "version": backend.version, "class_id": int(class_id), "label": CLASS_NAMES[class_id],
                  "confidence": round(float(probabilities[i, class_id]), 6),
                  "ood_score": None if scores is None else round(float(scores[i]), 6)}
        if pixels is not None:
            record["pixels"] = pixels[i].tolist()
        lines.append(json.dumps(record, separators=(",", ":")))
    return lines
