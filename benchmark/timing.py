"""Timing helpers: warm up, repeat until enough samples, report median, p99 and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """How long to measure: at least ``min_calls`` calls and ``min_seconds`` seconds, after a warm-up."""

    warmup_seconds: float = 0.3
    min_calls: int = 30
    min_seconds: float = 1.0
    max_calls: int = 20000


QUICK = Budget(warmup_seconds=0.02, min_calls=5, min_seconds=0.05, max_calls=2000)
FULL = Budget()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def time_calls(fn: Callable[[], object], budget: Budget) -> dict[str, float]:
    """Seconds per call: median, p99, interquartile range, count."""
    end = time.perf_counter() + budget.warmup_seconds
    fn()
    while time.perf_counter() < end:
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < budget.max_calls and (
            len(samples) < budget.min_calls or time.perf_counter() - start < budget.min_seconds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_s": statistics.median(samples), "p99_s": percentile(samples, 99),
            "iqr_s": quartiles[2] - quartiles[0], "calls": len(samples)}
