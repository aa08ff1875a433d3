"""Test helpers (not fixtures): waiting on a condition with a timeout that says what it waited for."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T], what: str, timeout: float, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    Args:
        probe: the check; its truthy result ends the wait.
        what: the awaited state, in words, for the error raised at the deadline.
        timeout: seconds before giving up (a hang guard, far above the expected wait).
        interval: seconds between probes.

    Raises:
        TimeoutError: naming ``what`` and ``timeout`` when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(interval)
    return result


def batch_histogram(url: str) -> tuple[float, float]:
    """(model calls, images) so far, from the server's ``fashion_batch_size`` histogram on /metrics."""
    import httpx

    series = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in httpx.get(f"{url}/metrics").text
              .splitlines() if line.startswith("fashion_batch_size_")}
    return series["fashion_batch_size_count"], series["fashion_batch_size_sum"]


def queued_jobs(hold: Path) -> int:
    """Jobs the held batcher has queued, as it writes them to ``<hold>.queued`` (0 before it wrote any)."""
    counter = hold.with_name(hold.name + ".queued")
    return int(counter.read_text() or 0) if counter.exists() else 0


@contextlib.contextmanager
def held_batcher(hold: Path) -> Iterator[None]:
    """While inside, the server started with ``FASHION_BATCH_HOLD_FILE=hold`` starts no model call.

    The hold is always lifted on the way out, so a failing test cannot stall the next one.
    """
    hold.with_name(hold.name + ".queued").unlink(missing_ok=True)
    hold.touch()
    try:
        yield
    finally:
        hold.unlink(missing_ok=True)
