"""Shadow and canary traffic for a candidate version of a backend (service.lifecycle sets the mode).

* **Shadow**: a share of the requests the serving version answers also run on the candidate, after the answer,
  through the same batcher (off the answer's path: the client never waits for it). Per candidate version the
  service keeps the images compared, the top-1 agreement, |Δp| (per image, the largest difference between the two
  versions' calibrated probabilities) and the candidate's latency (queue and model call); /model_info shows them
  and /metrics serves them as ``fashion_shadow_*``.
* **Canary**: a share of the requests that name no version are answered by the candidate (their answers name it).

``promote`` and ``rollback`` end either mode (service.lifecycle), as does an unload of the candidate.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("bentoml.fashion_serve")

MODES = ("shadow", "canary")


@dataclass(frozen=True)
class Mode:
    """A candidate ``version`` of a backend in ``kind`` mode (shadow or canary) for ``share`` of the requests."""

    kind: str
    version: str
    share: float

    def describe(self) -> dict[str, Any]:
        return {"mode": self.kind, "version": self.version, "share": self.share}


@functools.cache
def metrics() -> dict[str, Any]:
    """Prometheus series for shadow traffic, created once per process (BentoML serves them on /metrics)."""
    from prometheus_client import Counter, Histogram

    labels = ("backend", "version")
    return {
        "images": Counter("fashion_shadow_images", "Images a shadow version answered beside the serving one", labels),
        "agreed": Counter("fashion_shadow_agreed_images", "Shadow images whose top-1 class matched the served one",
                          labels),
        "abs_dp": Histogram("fashion_shadow_abs_dp", "Per image, the largest probability difference to the served "
                            "answer", labels, buckets=(1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)),
        "latency": Histogram("fashion_shadow_latency_seconds", "A shadow request's wait and model call", labels,
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)),
    }


@dataclass
class ShadowStats:
    """What a shadow version has shown so far."""

    requests: int = 0
    images: int = 0
    agreed: int = 0
    abs_dp_sum: float = 0.0
    abs_dp_max: float = 0.0
    latency_s_sum: float = 0.0
    failed: int = 0

    def add(self, served: np.ndarray, shadow: np.ndarray, seconds: float) -> np.ndarray:
        """Count one request: ``served`` and ``shadow`` are the two versions' probabilities. Returns |Δp| per
        image."""
        abs_dp = np.abs(served - shadow).max(axis=1)
        self.requests += 1
        self.images += len(served)
        self.agreed += int((served.argmax(1) == shadow.argmax(1)).sum())
        self.abs_dp_sum += float(abs_dp.sum())
        self.abs_dp_max = max(self.abs_dp_max, float(abs_dp.max(initial=0.0)))
        self.latency_s_sum += seconds
        return abs_dp

    def describe(self) -> dict[str, Any]:
        images = max(self.images, 1)
        return {"requests": self.requests, "images": self.images, "failed": self.failed,
                "agreement": self.agreed / images if self.images else None,
                "mean_abs_dp": self.abs_dp_sum / images if self.images else None, "max_abs_dp": self.abs_dp_max,
                "mean_latency_ms": 1000 * self.latency_s_sum / self.requests if self.requests else None}


class Traffic:
    """The modes of every backend, and the shadow statistics per ``(backend, version)``."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.modes: dict[str, Mode] = {}
        self.stats: dict[tuple[str, str], ShadowStats] = {}
        self.rng = rng or random.Random()
        self.tasks: set[asyncio.Task] = set()  # shadow runs in progress (kept so that none is collected early)

    def set(self, name: str, mode: Mode | None) -> None:
        """Put backend ``name`` in ``mode`` (``None``: neither mode)."""
        if mode is None or mode.share == 0:
            self.modes.pop(name, None)
        else:
            self.modes[name] = mode

    def end(self, name: str, version: str | None = None) -> None:
        """End backend ``name``'s mode (only if its candidate is ``version``, when given)."""
        if name in self.modes and version in (None, self.modes[name].version):
            del self.modes[name]

    def chosen(self, name: str, kind: str) -> str | None:
        """The candidate version when this request falls in the share of backend ``name``'s ``kind`` mode."""
        mode = self.modes.get(name)
        if mode is None or mode.kind != kind or self.rng.random() >= mode.share:
            return None
        return mode.version

    def describe(self, name: str) -> dict[str, Any]:
        """Backend ``name``'s mode and the statistics of each version it shadowed."""
        mode = self.modes.get(name)
        return {**(mode.describe() if mode else {"mode": None}),
                "shadow": {version: stats.describe() for (backend, version), stats in self.stats.items()
                           if backend == name}}

    def record(self, name: str, version: str, served: np.ndarray, shadow: np.ndarray, seconds: float) -> None:
        """One shadow request's comparison, kept here and in the Prometheus series."""
        abs_dp = self.stats.setdefault((name, version), ShadowStats()).add(served, shadow, seconds)
        series, labels = metrics(), {"backend": name, "version": version}
        series["images"].labels(**labels).inc(len(served))
        series["agreed"].labels(**labels).inc(int((served.argmax(1) == shadow.argmax(1)).sum()))
        for value in abs_dp:
            series["abs_dp"].labels(**labels).observe(float(value))
        series["latency"].labels(**labels).observe(seconds)

    def failed(self, name: str, version: str) -> None:
        self.stats.setdefault((name, version), ShadowStats()).failed += 1
