"""What the reliability scenarios measure a server with (benchmark.harness starts it): probes, latency, recovery."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmark.harness import multipart_body, percentile
from fashion.samples import sample_paths

BOUNDARY = "fashionserveboundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def host_steal_seconds() -> float:
    """CPU time the hypervisor gave to others while this machine wanted it (``steal`` in /proc/stat)."""
    import psutil

    return getattr(psutil.cpu_times(), "steal", 0.0)


def upload_body(workdir: Path) -> tuple[Path, bytes]:
    """A one-image multipart body (a real test image) on disk for wrk, and its bytes."""
    body = multipart_body(sample_paths()[9].read_bytes(), BOUNDARY)
    path = workdir / "upload.bin"
    path.write_bytes(body)
    return path, body


def timed_request(client: httpx.Client, url: str, body: bytes) -> tuple[float, int | str]:
    """(seconds, status or exception name) of one upload."""
    start = time.perf_counter()
    try:
        status: int | str = client.post(url, content=body, headers={"Content-Type": CONTENT_TYPE}).status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return time.perf_counter() - start, status


def baseline_latency(url: str, body: bytes, requests: int = 200) -> dict[str, float]:
    """Sequential single-image requests on an idle server: median and p99 seconds."""
    with httpx.Client(timeout=30) as client:
        for _ in range(20):
            timed_request(client, f"{url}/classify", body)
        times = [timed_request(client, f"{url}/classify", body)[0] for _ in range(requests)]
    return {"p50_s": statistics.median(times), "p99_s": percentile(times, 99)}


def recovery_seconds(url: str, body: bytes, normal_s: float, window: int = 20, limit_s: float = 30.0) -> float:
    """Seconds until ``window`` requests in a row (one at a time) each take at most ``normal_s``."""
    start = time.perf_counter()
    streak = 0
    with httpx.Client(timeout=30) as client:
        while time.perf_counter() - start < limit_s:
            seconds, status = timed_request(client, f"{url}/classify", body)
            streak = streak + 1 if status == 200 and seconds <= normal_s else 0
            if streak == window:
                return time.perf_counter() - start
            time.sleep(0.01)
    return float("inf")


@dataclass
class Prober:
    """Polls ``/livez`` and ``/readyz`` at each base URL in a thread every ``interval`` s; keeps every answer."""

    urls: tuple[str, ...]
    interval: float = 0.2
    timeout: float = 5.0
    answers: list[tuple[float, str, int | str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Prober:
        # One thread per URL: a probe stuck on one port must not delay the probes of another.
        self._threads = [threading.Thread(target=self._poll, args=(url,), name="prober", daemon=True)
                         for url in self.urls]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _poll(self, url: str) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                for path in ("/livez", "/readyz"):
                    start = time.perf_counter()
                    try:
                        status: int | str = client.get(url + path).status_code
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    self.answers.append((time.time(), url + path, status, time.perf_counter() - start))
                self._stop.wait(self.interval)

    def summary(self, url: str) -> dict[str, object]:
        """For probes of ``url``: count, answers by path and status, the slowest answer and the p99."""
        mine = [(path.removeprefix(url), status, seconds) for _, path, status, seconds in self.answers
                if path.startswith(url + "/")]
        statuses: dict[str, int] = {}
        for path, status, _ in mine:
            statuses[f"{path} {status}"] = statuses.get(f"{path} {status}", 0) + 1
        seconds = [s for *_, s in mine]
        return {"probes": len(mine), "statuses": statuses, "max_s": max(seconds, default=0.0),
                "p99_s": percentile(seconds, 99) if seconds else 0.0}
