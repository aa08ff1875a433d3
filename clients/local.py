"""In-process classification for ``batch --local``: an exported model, no server.

:meth:`LocalClassifier.records` is the one call for "classify this array of uint8
images with this model": whole arrays in, :data:`fashion.contract.ANSWER_DTYPE` rows
out (what the service's compact answer holds), so every batch path shares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashion.backends import BACKENDS, Predictor
from fashion.contract import answer_records, describe_predictions, preprocess, softmax
from fashion.env import available_cpus
from fashion.ood import OodDetector
from fashion.servable import load_servable

LOCAL_DEFAULT = "onnx-torch"


def model_folder(model: str | None, backend: str) -> Path:
    """An exported model folder, given as a path, a BentoML tag, or nothing (the store's latest model)."""
    if model and Path(model).is_dir():
        return Path(model)
    import bentoml

    return Path(bentoml.models.get(model or f"{BACKENDS[backend].model}:latest").path)


@dataclass(frozen=True)
class LocalPlan:
    """How a ``batch --local`` job spends the cores: ``calls`` model calls at once, ``threads`` ONNX Runtime
    threads each (0: every core)."""

    calls: int
    threads: int


def plan_local(backend: str | None, concurrency: int | None, cores: int | None = None) -> LocalPlan:
    """By default, one single-threaded ONNX Runtime call per core (``cores``: the container's CPUs), not one call
    using every core.

    A call that uses every core splits each layer's matrix product over its threads, and they meet at the end of
    every layer. The job's reader and writer threads share those cores: when one of them takes a core, the model
    thread on it stops and the others wait for it at the next meeting point. Calls of one thread each meet nowhere:
    a stopped call delays itself only. ``make bench-batch`` measures both ways in the same repeats (rows ``local``
    and ``local-one-call`` of results/batch-bench-<machine>.md; docs/batch.md). An explicit ``concurrency`` shares
    the cores among its calls. Other runtimes keep one call at a time: their threads are their own.
    """
    if BACKENDS[backend or LOCAL_DEFAULT].runtime != "onnx":
        return LocalPlan(concurrency or 1, 0)
    cores = cores or available_cpus()
    calls = concurrency or cores
    return LocalPlan(calls, max(1, cores // calls))


@dataclass
class LocalClassifier:
    """A verified artifact loaded in this process, answering like the service."""

    predictor: Predictor
    backend: str
    version: str
    temperature: float = 1.0  # the export's calibration, as the service applies it
    detector: OodDetector | None = field(default=None, repr=False)

    @classmethod
    def open(cls, model: str | None, backend: str | None, threads: int = 0, spin: bool = False) -> LocalClassifier:
        """Load ``backend``'s artifact from an exported folder, a BentoML tag, or the store's latest model, as the
        service loads it (fashion.servable.load_servable).

        Args:
            model: folder or tag (``None``: the store's latest model for the backend).
            backend: a name from :data:`fashion.backends.BACKENDS` (``None``: ``onnx-torch``).
            threads: model threads; 0 lets the runtime use every core.
            spin: let ONNX Runtime's idle threads spin between calls. Off by default: a batch job reads and writes
                in other threads meanwhile, and measured here (docs/batch.md) a job kept up with the model better
                without spinning.
        """
        backend = backend or LOCAL_DEFAULT
        options = {"threads": threads, "spin": spin} if BACKENDS[backend].runtime == "onnx" else {}
        loaded = load_servable(model_folder(model, backend), backend, device="auto", **options)
        return cls(loaded.predictor, backend, loaded.version, loaded.temperature, loaded.detector)

    def classify(self, pixels: np.ndarray) -> list[dict[str, Any]]:
        """Full answers (label, confidence, top-k...), as the service gives them."""
        logits = self.predictor.predict(preprocess(pixels))
        scores = self.detector.score(logits, pixels) if self.detector else None
        return describe_predictions(softmax(logits, self.temperature), self.backend, self.version, ood_scores=scores,
                                    ood_threshold=self.detector.threshold if self.detector else None)

    def records(self, pixels: np.ndarray) -> np.ndarray:
        """:data:`~fashion.contract.ANSWER_DTYPE` rows for ``uint8[N, 28, 28]`` pixels: class, confidence, all ten
        (calibrated) probabilities; whole-array operations only."""
        return self.records_of(self.logits(pixels))

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """The model's logits for ``uint8[N, 28, 28]`` pixels, scaled here, right before the model call.

        A batch job runs this in its model thread (clients.batch.Stages): the float input the scaling writes
        (3 MiB a chunk of 1,024) is still in this core's cache when ONNX Runtime reads it. Scaled in the reader
        thread it was written on the other core and read back from memory, and that extra pass in a third thread
        took the cores from ONNX Runtime's two; measured (docs/batch.md), the job used less CPU per image this way.
        """
        return self.predictor.predict(preprocess(pixels))

    def records_of(self, logits: np.ndarray) -> np.ndarray:
        """:meth:`records` from the model's logits (a batch job computes them in another thread)."""
        return answer_records(softmax(logits, self.temperature))
