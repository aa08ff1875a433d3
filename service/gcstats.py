"""Garbage-collector pauses of the serving worker: a freeze once warm, and a record of every pass.

Why: a worker holding TensorFlow, PyTorch and BentoML has millions of long-lived objects. Every
full (generation-2) pass of CPython's cyclic collector walks all of them, for hundreds of
milliseconds, during which the event loop answers nobody (docs/history.md). ``freeze_heap``
moves everything alive once the models are loaded and warmed into the permanent generation, so
later passes only walk what requests create -- the remedy SGLang adopted for the same stall
(https://github.com/sgl-project/sglang/pull/9241).

``GCRecorder`` times each pass from ``gc.callbacks`` and keeps per-generation counts, a pause
histogram and the longest pause, in plain integers: the callback runs inside the collector, at
any allocation of any thread, so it takes no lock and allocates as little as it can.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from typing import Any

log = logging.getLogger("bentoml.fashion_serve")

# Upper bounds (ms) of the pause histogram's buckets; the last bucket is everything above.
PAUSE_BUCKETS_MS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0)


class GCRecorder:
    """Counts and times collector passes per generation (install with ``install``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every pass so far (the service resets once ready: startup's passes are not serving's)."""
        self.started = 0.0
        self.counts = [0, 0, 0]
        self.collected = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.buckets = [[0] * (len(PAUSE_BUCKETS_MS) + 1) for _ in range(3)]

    def install(self) -> GCRecorder:
        """Register with ``gc.callbacks`` (once); returns self."""
        if self.on_gc not in gc.callbacks:
            gc.callbacks.append(self.on_gc)
        return self

    def uninstall(self) -> None:
        """Stop recording."""
        if self.on_gc in gc.callbacks:
            gc.callbacks.remove(self.on_gc)

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """The ``gc.callbacks`` hook: notes the start, then files the pause under its generation."""
        if phase == "start":
            self.started = time.perf_counter()
            return
        ms = (time.perf_counter() - self.started) * 1000.0
        generation = info["generation"]
        self.counts[generation] += 1
        self.collected[generation] += info["collected"]
        self.total_ms[generation] += ms
        if ms > self.max_ms[generation]:
            self.max_ms[generation] = ms
        bucket = 0
        while bucket < len(PAUSE_BUCKETS_MS) and ms > PAUSE_BUCKETS_MS[bucket]:
            bucket += 1
        self.buckets[generation][bucket] += 1

    def snapshot(self) -> dict[str, Any]:
        """What the status endpoint answers: per generation passes, objects collected, pause times."""
        generations = [{
            "generation": g, "passes": self.counts[g], "collected": self.collected[g],
            "total_ms": round(self.total_ms[g], 3), "max_ms": round(self.max_ms[g], 3),
            "pauses_ms": {**{f"le_{b:g}": n for b, n in zip(PAUSE_BUCKETS_MS, self.buckets[g][:-1], strict=True)},
                          "gt_" + f"{PAUSE_BUCKETS_MS[-1]:g}": self.buckets[g][-1]},
        } for g in range(3)]
        return {"frozen_objects": gc.get_freeze_count(), "thresholds": list(gc.get_threshold()),
                "generations": generations}


def census(top: int = 10) -> dict[str, Any]:
    """The objects the collector tracks (the frozen ones excluded), by type, most numerous first.

    This is how the per-request timers were found: their count grew by one set per request.
    """
    counts = Counter(type(obj).__name__ for obj in gc.get_objects())
    return {"tracked_objects": sum(counts.values()), "by_type": dict(counts.most_common(top))}


def settle_heap(recorder: GCRecorder, freeze: bool) -> None:
    """Once the models are warm: freeze the heap (if ``freeze``), then start the record afresh."""
    if freeze:
        freeze_heap()
    recorder.reset()


def freeze_imports() -> None:
    """Move what the imports made (modules, classes, functions) to the permanent generation, uncollected.

    Call before the models load: it all lives as long as the worker, and a full pass over it would find next to no
    garbage while costing time on the way to ready (results/bento-profiles-*.md). :func:`freeze_heap` then sweeps
    only what the loading made.
    """
    gc.freeze()


def freeze_heap() -> None:
    """Collect once, then move every surviving object to the permanent generation.

    Call when the models are loaded and warmed: what is alive then lives as long as the worker.
    The log line gives no object count: counting walks the whole permanent generation, a cost on the way to ready
    that only a log line would use (``/gcz`` counts on demand).
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("froze the heap out of the collector's reach in %.0f ms", (time.perf_counter() - started) * 1000)
