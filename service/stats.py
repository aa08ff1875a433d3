"""Per model version inference statistics in the format of Triton's statistics extension.

``GET /v2/models[/{name}[/versions/{version}]]/stats`` (service.repository) answers them; tritonclient's
``get_inference_statistics`` and perf_analyzer read them to split the server's time into queue and compute.
They count the Open Inference Protocol's inference requests (service.v2), each with what it measured:

* ``version``: each version by its Triton name (:func:`triton_version`), a number, as perf_analyzer expects;
* ``success`` / ``fail``: requests answered or failed, and their time from the handler's start to the answer;
* ``queue``: the wait for the model call (service.batcher);
* ``compute_input``: reading the request's tensors; ``compute_infer``: the model call that answered it (shared by
  the requests batched into it); ``compute_output``: building the output tensors;
* ``inference_count``: images answered; ``execution_count``: model calls that answered them.

perf_analyzer aborts on a malformed answer, so every field is measured; what is not measured (the response cache,
per-batch-size figures, memory) is reported as Triton reports it when unused: zero counts, empty lists.
Specification: https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_statistics.md
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
# Model calls remembered per version to count each once (a call answers the requests batched into it, which
# finish within a moment of each other).
RECENT_EXECUTIONS = 4096


def triton_version(version: str) -> str:
    """A version's name as Triton names versions, a decimal integer: the first 15 hex digits of its content hash.

    perf_analyzer parses the version names in the statistics as integers, and a content hash is not one. This
    number is the same in every worker and after every restart, and fits Triton's signed 64-bit version numbers;
    every route that takes a version accepts it as well as the hash.
    """
    return str(int(version[:15], 16))


@dataclass
class Timing:
    """A count and the total nanoseconds of one stage."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * 1e9))


@dataclass
class VersionStats:
    """What one version of one model has done since it was loaded."""

    stages: dict[str, Timing] = field(default_factory=lambda: {stage: Timing() for stage in STAGES})
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    executions: set[int] = field(default_factory=set)

    def count_execution(self, execution: int) -> None:
        """Count model call ``execution`` once, however many requests it answered."""
        if execution in self.executions:
            return
        self.execution_count += 1
        self.executions.add(execution)
        if len(self.executions) > RECENT_EXECUTIONS:
            self.executions = {e for e in self.executions if e > execution - RECENT_EXECUTIONS // 2}


@dataclass(frozen=True)
class RequestTiming:
    """The seconds one answered inference request spent in each stage, and its images."""

    images: int
    total_s: float
    input_s: float
    queue_s: float
    infer_s: float
    output_s: float
    execution: int


class ModelStats:
    """Statistics per ``(model name, version)``, kept for the worker's life (a version unloaded and loaded again
    goes on counting, as Triton's do)."""

    def __init__(self) -> None:
        self.table: dict[tuple[str, str], VersionStats] = {}

    def of(self, name: str, version: str) -> VersionStats:
        return self.table.setdefault((name, version), VersionStats())

    def record_success(self, name: str, version: str, timing: RequestTiming) -> None:
        """One answered request."""
        stats = self.of(name, version)
        for stage, seconds in (("success", timing.total_s), ("compute_input", timing.input_s),
                               ("queue", timing.queue_s), ("compute_infer", timing.infer_s),
                               ("compute_output", timing.output_s)):
            stats.stages[stage].add(seconds)
        stats.inference_count += timing.images
        stats.count_execution(timing.execution)
        stats.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, name: str, version: str, total_s: float) -> None:
        """One request that reached the model's version and failed."""
        self.of(name, version).stages["fail"].add(total_s)

    def model_stats(self, versions: dict[str, list[str]]) -> dict[str, Any]:
        """The statistics answer for ``{model name: [versions]}``, in that order (zeros for a version that has
        answered nothing yet)."""
        return {"model_stats": [self.describe(name, version)
                                for name, listed in versions.items() for version in listed]}

    def describe(self, name: str, version: str) -> dict[str, Any]:
        stats = self.table.get((name, version)) or VersionStats()
        return {"name": name, "version": triton_version(version), "last_inference": stats.last_inference_ms,
                "inference_count": stats.inference_count, "execution_count": stats.execution_count,
                "inference_stats": {stage: {"count": t.count, "ns": t.ns} for stage, t in stats.stages.items()},
                "batch_stats": [], "memory_usage": []}
