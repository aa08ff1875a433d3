"""Inference backends with one API: ``load(path, device) -> Predictor``.

Every backend module exposes ``load`` and a predictor with ``predict(images)``
taking the contract's ``float32[N, 28, 28]`` and returning ``float32[N, 10]``
logits, plus ``describe()`` saying which device really runs it. Callers never
branch on the framework: they pick a backend by name from :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fashion.manifest import read_manifest, verify_artifact


class Predictor(Protocol):
    """A loaded model."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Logits ``float32[N, 10]`` for ``float32[N, 28, 28]`` images."""

    def describe(self) -> dict[str, Any]:
        """Runtime facts: device or execution providers actually in use."""


@dataclass(frozen=True)
class BackendSpec:
    """A servable backend: which exported model, which artifact in it, which runtime module."""

    model: str
    artifact: str
    runtime: str


MODEL_NAMES = {"torch": "fashion-mlp-torch", "tf": "fashion-mlp-tf"}

BACKENDS: dict[str, BackendSpec] = {
    "onnx-torch": BackendSpec(MODEL_NAMES["torch"], "onnx", "onnx"),
    "onnx-tf": BackendSpec(MODEL_NAMES["tf"], "onnx", "onnx"),
    "torch": BackendSpec(MODEL_NAMES["torch"], "torch", "torch"),
    "savedmodel": BackendSpec(MODEL_NAMES["tf"], "savedmodel", "savedmodel"),
    "onnx-int8": BackendSpec(MODEL_NAMES["torch"], "onnx-int8", "onnx"),
}


def runtime_module(runtime: str):
    """The module of one runtime (imported on demand: each pulls in its framework)."""
    if runtime not in {"onnx", "torch", "savedmodel"}:
        raise ValueError(f"unknown runtime {runtime!r}")
    return importlib.import_module(f"fashion.backends.{runtime}_runtime")


def load_artifact(model_dir: Path, artifact: str, runtime: str, device: str = "auto", **options: Any) -> Predictor:
    """Verify one artifact of an exported model folder against its manifest, then load it."""
    manifest = read_manifest(model_dir)
    entry = manifest["artifacts"].get(artifact)
    if entry is None:
        raise KeyError(f"{model_dir}: no artifact {artifact!r} (has {sorted(manifest['artifacts'])})")
    path = verify_artifact(model_dir, entry)
    return runtime_module(runtime).load(path, device=device, manifest=manifest, **options)
