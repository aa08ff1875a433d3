"""benchmark.timing: the percentile and the timed calls the benchmark reports."""

from __future__ import annotations

from benchmark.timing import QUICK, percentile, time_calls


def test_timing_helpers():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0 and percentile([5.0], 99) == 5.0
    stats = time_calls(lambda: sum(range(100)), QUICK)
    assert stats["calls"] >= QUICK.min_calls and 0 < stats["median_s"] <= stats["p99_s"]
