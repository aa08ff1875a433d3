"""benchmark.harness: the percentile and the timed calls the benchmark reports."""

from __future__ import annotations

import pytest

from benchmark.harness import QUICK, percentile, time_calls

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def test_timing_helpers():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0 and percentile([5.0], 99) == 5.0
    stats = time_calls(lambda: sum(range(100)), QUICK)
    assert stats["calls"] >= QUICK.min_calls and 0 < stats["median_s"] <= stats["p99_s"]
