"""Inference backends with one API: ``load(path, device) -> Predictor``.

Every backend module exposes ``load`` and a predictor with ``predict(images)``
taking the contract's ``float32[N, 28, 28]`` and returning ``float32[N, 10]``
logits, plus ``describe()`` saying which device really runs it. Callers never
branch on the framework: they pick a backend by name from :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
import importlib.util
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


# The top-level modules each runtime's code imports: a Bento profile that leaves a framework out (bentofile-onnx.yaml
# carries ONNX Runtime only) serves only the backends whose runtime finds all of them. Module names, not
# distributions: `onnxruntime` and `onnxruntime-gpu` install the same `onnxruntime` module.
RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime", "onnx"),
    "torch": ("torch",),
    "savedmodel": ("tensorflow",),
}


def runtime_module(runtime: str):
    """The module of one runtime (imported on demand: each pulls in its framework)."""
    if runtime not in RUNTIME_MODULES:
        raise ValueError(f"unknown runtime {runtime!r}")
    return importlib.import_module(f"fashion.backends.{runtime}_runtime")


def missing_modules(runtime: str) -> tuple[str, ...]:
    """What this environment lacks to run ``runtime``: its code module (a profile may leave it out of the Bento)
    and the framework modules it imports. Empty when it can run.

    Found with ``importlib.util.find_spec``, which locates a top-level module without importing it: deciding
    must not cost the seconds and memory of importing torch or TensorFlow.
    """
    wanted = (f"fashion.backends.{runtime}_runtime", *RUNTIME_MODULES[runtime])
    return tuple(name for name in wanted if importlib.util.find_spec(name) is None)


def unavailable_backends() -> dict[str, tuple[str, ...]]:
    """Per backend this environment cannot run, the modules it lacks (:func:`missing_modules`)."""
    lacking = {runtime: missing_modules(runtime) for runtime in RUNTIME_MODULES}
    return {name: lacking[spec.runtime] for name, spec in BACKENDS.items() if lacking[spec.runtime]}


def load_artifact(model_dir: Path, artifact: str, runtime: str, device: str = "auto", **options: Any) -> Predictor:
    """Verify one artifact of an exported model folder against its manifest, then load it."""
    manifest = read_manifest(model_dir)
    entry = manifest["artifacts"].get(artifact)
    if entry is None:
        raise KeyError(f"{model_dir}: no artifact {artifact!r} (has {sorted(manifest['artifacts'])})")
    path = verify_artifact(model_dir, entry)
    return runtime_module(runtime).load(path, device=device, manifest=manifest, **options)
