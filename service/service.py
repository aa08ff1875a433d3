"""The BentoML service: ``bentoml serve service.service:FashionClassifier``.

Endpoints (all POST, JSON answers):

* ``/classify`` -- one or more uploaded images, adaptively batched across
  concurrent requests; ``?backend=`` picks the backend (default: the fastest).
* ``/classify_batch`` -- many uploaded images in one call, answers in input order.
* ``/classify_array`` -- ``N x 28 x 28`` uint8 pixels as JSON or a ``.npy`` body.
* ``/model_info`` -- per backend: loaded, device or providers in use, version,
  checksums, test accuracy.

``/livez``, ``/readyz`` (ready once every configured backend has loaded, passed its
checksums and its warm-up), ``/metrics`` and the OpenAPI page come from BentoML.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from fashion.backends import MODEL_NAMES
from service.config import ServiceConfig
from service.inputs import BACKEND_NAMES, ImageBatch, ImageUpload, JSONAnswer, PixelArray
from service.registry import ModelRegistry

log = logging.getLogger("bentoml.fashion_serve")

# Adaptive batching of the per-image endpoint; measured in results/ (see README "Serving").
MAX_BATCH_SIZE = 32
MAX_LATENCY_MS = 1000


@bentoml.service(
    name="fashion-classifier",
    workers=1,
    # One thread runs the models: inference never overlaps, so each runtime may use every core
    # (FASHION_THREADS) without oversubscribing the CPU.
    threads=1,
    traffic={"timeout": 30, "max_concurrency": 256},
    # Measured on 2 cores (README "Serving"): the access log and OpenTelemetry's per-request spans (no
    # exporter is configured, so they are built and dropped) each cost a large share of the
    # worker's CPU. Both can be turned back on with a BentoML configuration file.
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": [".*"]},
)
class FashionClassifier:
    """Classifies 28 x 28 clothing images with every exported backend."""

    torch_model = bentoml.models.BentoModel(f"{MODEL_NAMES['torch']}:latest")
    tf_model = bentoml.models.BentoModel(f"{MODEL_NAMES['tf']}:latest")

    def __init__(self) -> None:
        self.config = ServiceConfig.from_env()
        self.registry = ModelRegistry(self.config)
        model_dirs = {MODEL_NAMES["torch"]: Path(self.torch_model.path), MODEL_NAMES["tf"]: Path(self.tf_model.path)}
        # Load in the background so /livez answers and /readyz says "not ready" meanwhile.
        threading.Thread(target=self.registry.load_all, args=(model_dirs,), name="load-models", daemon=True).start()

    def __is_ready__(self) -> bool:
        return self.registry.ready

    @bentoml.api(route="/classify", input_spec=ImageUpload, output_spec=JSONAnswer, batchable=True,
                 max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Classify uploaded image(s); concurrent requests are batched together per backend."""
        answers: list[dict[str, Any]] = [{}] * len(images)
        for code in np.unique(images["backend"]):
            rows = np.flatnonzero(images["backend"] == code)
            group = self.registry.classify(BACKEND_NAMES[code], images["pixels"][rows])
            for row, answer in zip(rows, group, strict=True):
                answers[row] = answer
        return answers

    @bentoml.api(route="/classify_batch", input_spec=ImageBatch, output_spec=JSONAnswer)
    def classify_batch(self, images: np.ndarray, backend: str) -> list[dict[str, Any]]:
        """Classify many uploaded images in one call; answers in input order."""
        return self.registry.classify(backend, images)

    @bentoml.api(route="/classify_array", input_spec=PixelArray, output_spec=JSONAnswer)
    def classify_array(self, pixels: np.ndarray, backend: str) -> list[dict[str, Any]]:
        """Classify N x 28 x 28 uint8 pixels (JSON or .npy); answers in input order."""
        return self.registry.classify(backend, pixels)

    @bentoml.api(route="/model_info", output_spec=JSONAnswer)
    def model_info(self) -> dict[str, Any]:
        """Which backends are loaded, on which device, with which model version and accuracy."""
        return self.registry.info()
