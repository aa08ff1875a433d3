"""Loaded backends: verification, warm-up, prediction and the facts the info endpoint reports."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from fashion.backends import BACKENDS
from fashion.contract import CLASS_NAMES, describe_predictions
from fashion.env import has_nvidia_gpu
from fashion.manifest import read_manifest
from fashion.metrics import Identity, parity_failures, parity_report
from fashion.samples import sample_images
from fashion.servable import Servable, load_servable
from service.batcher import Outputs
from service.config import ServiceConfig
from service.shadow import Traffic
from service.stats import ModelStats, triton_version

log = logging.getLogger("bentoml.fashion_serve")

# Between a backend's name and a version in a key that names one loaded version: ``onnx-torch@6fd9a669fad08c74``.
# Requests carry such a key from the moment they are parsed (:meth:`ModelRegistry.pin`), so a request in flight
# when another version is promoted finishes on the one it started on.
VERSION_SEPARATOR = "@"


def version_key(name: str, version: str) -> str:
    """The key of one loaded version of backend ``name``."""
    return f"{name}{VERSION_SEPARATOR}{version}"


def lineage(manifest: dict[str, Any]) -> dict[str, Any]:
    """Where a version comes from: its training run, preset, metrics and export time (from its manifest)."""
    return {"version": manifest["version"], "model": manifest["name"], "run": manifest.get("run"),
            "preset": manifest.get("preset"), "seed": manifest.get("seed"),
            "test_accuracy": manifest.get("source_test_accuracy"), "exported": manifest.get("created")}


class WarmupError(RuntimeError):
    """A backend loaded but did not reproduce its export's predictions on the sample images."""


@dataclass
class LoadedBackend(Servable):
    """One backend, ready to predict: a :class:`fashion.servable.Servable` and the device the configuration asked
    for (which it may not have got, see :func:`place_backends`)."""

    device_requested: str = "auto"

    @classmethod
    def of(cls, servable: Servable, device_requested: str) -> LoadedBackend:
        """``servable``, as the registry keeps it."""
        return cls(**{f.name: getattr(servable, f.name) for f in fields(Servable)}, device_requested=device_requested)

    def info(self) -> dict[str, Any]:
        entry = self.artifact
        return {
            "loaded": True, "model": f"{self.manifest['name']}:{self.manifest['version']}",
            "model_version": self.version, "artifact": entry["path"], "format": entry["format"],
            "sha256": entry["sha256"], "test_accuracy": entry["test_accuracy"],
            "source_framework": self.manifest["framework"], "preset": self.manifest["preset"],
            "load_seconds": round(self.load_seconds, 3), "device_requested": self.device_requested,
            **self.predictor.describe(),
            "calibration_temperature": self.temperature,
            "ood_threshold": self.detector.threshold if self.detector else None,
        }


def place_backends(requested: dict[str, str], gpu_present: bool) -> tuple[dict[str, str], str | None]:
    """Devices to load each backend on, and the one warning to log when CUDA is asked for but absent.

    ``auto`` stays ``auto`` (each runtime picks CUDA where a GPU is present); ``cuda`` without a GPU becomes
    ``cpu``, so that the service still starts, with one warning naming the backends that fell back.
    """
    fallback = sorted(name for name, device in requested.items() if device == "cuda" and not gpu_present)
    placed = {name: "cpu" if name in fallback else device for name, device in requested.items()}
    warning = (f"CUDA was asked for {', '.join(fallback)} but this machine has no NVIDIA GPU; they run on the CPU "
               "(see device and device_requested in /model_info)") if fallback else None
    return placed, warning


class ModelRegistry:
    """Loads the configured backends once; answers predictions for them."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        # The version each backend serves, by backend name. Replaced whole, never changed in place, when a version
        # is promoted (service.lifecycle): a reader sees the old map or the new one.
        self.backends: dict[str, LoadedBackend] = {}
        # Every loaded version per backend, oldest first: the serving one, a candidate, the one a rollback returns to.
        self.versions: dict[str, dict[str, LoadedBackend]] = {}
        # The version each backend served before its last promotion (what a rollback returns to).
        self.previous: dict[str, str] = {}
        # Versions unloaded but maybe still answering a request that was pinned to them (service.lifecycle drains
        # them before they are dropped).
        self.draining: dict[str, LoadedBackend] = {}
        # Inference statistics per version, in Triton's format (service.stats).
        self.stats = ModelStats()
        # Shadow and canary modes of a candidate version, and what shadowing showed (service.shadow).
        self.traffic = Traffic()
        self.skipped: dict[str, str] = {}
        self.error: str | None = None
        self.ready = False

    def load_all(self, model_dirs: dict[str, Path], before_ready: Callable[[], object] | None = None) -> None:
        """Verify checksums, load, and warm up every configured backend; call ``before_ready``; then mark ready.

        Never raises: a failure is kept in :attr:`error` (shown by the info endpoint
        and the logs) and the service stays not ready.
        """
        warm: dict[str, np.ndarray] = {}
        try:
            samples, _ = sample_images()
            requested = {name: self.config.device_for(name) for name in self.config.backends}
            devices, warning = place_backends(requested, has_nvidia_gpu())
            if warning:
                log.warning(warning)
            for name in self.config.backends:
                spec = BACKENDS[name]
                model_dir = model_dirs[spec.model]
                manifest = read_manifest(model_dir)
                if spec.artifact not in manifest["artifacts"] and not self.config.explicit_backends:
                    self.skipped[name] = f"{manifest['name']}:{manifest['version']} has no {spec.artifact!r} artifact"
                    log.info("backend %s skipped: %s", name, self.skipped[name])
                    continue
                servable = load_servable(model_dir, name, devices[name], threads=self.config.threads)
                backend = LoadedBackend.of(servable, requested[name])
                warm[name] = self.warm_up(backend, samples)
                self.backends[name] = backend
                self.versions[name] = {backend.version: backend}
                log.info("backend %s ready: %s", name, backend.predictor.describe())
            self.check_parity(warm)
            if before_ready:
                before_ready()
            self.ready = True
        except Exception as exc:  # keep serving /livez and the reason; readiness stays false
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("models failed to load, service will not become ready: %s", self.error)

    @staticmethod
    def warm_up(backend: LoadedBackend, pixels: np.ndarray) -> np.ndarray:
        """Predict the bundled sample images; they must match what the export recorded for this artifact.

        Returns:
            The logits, for :meth:`check_parity` once every backend has loaded.
        """
        logits = backend.logits(pixels)
        got = logits.argmax(1).tolist()
        entry = backend.artifact
        # Float32 artifacts reproduce the source model exactly; int8 records its own labels.
        expected = entry.get("samples_expected", backend.manifest["samples_expected"])
        if got != expected:
            raise WarmupError(f"{backend.name}: warm-up predicted {got}, export recorded {expected}")
        return logits

    def check_parity(self, logits: dict[str, np.ndarray]) -> dict[str, Any]:
        """The loaded backends must agree with each other on the samples as /parity judges them
        (fashion.metrics.parity_report).

        The recorded labels say little about probabilities: an artifact whose weights drifted can keep
        every sample's label. Backends of one exported model must also agree within the tolerance.
        """
        report = parity_report(logits, self.identities(), self.config.parity_tolerance)
        if not report["consistent"]:
            raise WarmupError("backends of one model disagree on the sample images: "
                              + "; ".join(parity_failures(report)))
        return report

    def identities(self) -> dict[str, Identity]:
        """Per loaded backend: the exported model and the precision it serves."""
        return {name: Identity.of(name, backend.manifest) for name, backend in self.backends.items()}

    def get(self, name: str | None) -> LoadedBackend:
        """A loaded backend by name (``None``: the default), serving version, or one version by its key
        (:func:`version_key`). Raises KeyError with :meth:`why_not_loaded` or :meth:`why_no_version`."""
        name, _, version = (name or self.config.default_backend).partition(VERSION_SEPARATOR)
        if name not in self.backends:
            raise KeyError(self.why_not_loaded(name))
        if not version:
            return self.backends[name]
        found = self.versions.get(name, {}).get(version) or self.draining.get(version_key(name, version))
        if found is None and version.isdigit():  # Triton's name for it (triton_version)
            found = next((b for b in [*self.versions.get(name, {}).values(), *self.draining.values()]
                          if b.name == name and triton_version(b.version) == version), None)
        if found is None:
            raise KeyError(self.why_no_version(name, version))
        return found

    def pin(self, name: str | None, version: str | None = None) -> str:
        """The key of the version that answers a request for backend ``name``: ``version`` when given, else the
        canary when this request falls in its share (service.shadow), else the one serving now. Raises KeyError as
        :meth:`get`."""
        name = name or self.config.default_backend
        backend = self.get(name)
        if version:  # a loaded version, never one being drained after its unload
            if version not in self.versions.get(name, {}):
                raise KeyError(self.why_no_version(name, version))
            return version_key(name, version)
        canary = self.traffic.chosen(backend.name, "canary")
        if canary is not None and canary in self.versions.get(backend.name, {}):
            return version_key(backend.name, canary)
        return version_key(backend.name, backend.version)

    def why_no_version(self, name: str, version: str) -> str:
        """The one message for a version of a loaded backend that is not loaded, naming the ones that are."""
        return (f"backend {name!r} has no loaded version {version[:64]!r}; loaded: {list(self.versions.get(name, {}))}"
                f", serving {self.backends[name].version!r}")

    def add_version(self, backend: LoadedBackend) -> None:
        """Keep ``backend`` loaded beside the serving version: pinnable by its key, not yet answering others."""
        self.versions[backend.name] = {**self.versions.get(backend.name, {}), backend.version: backend}

    def promote(self, name: str, version: str) -> str:
        """Make ``version`` (loaded) the one backend ``name`` serves; return the version it replaces.

        One assignment of a new map: requests parsed before it keep the key of the version they were pinned to.
        """
        backend = self.get(version_key(name, version))
        replaced = self.backends[name].version
        if replaced != version:
            self.previous[name] = replaced
        self.backends = {**self.backends, name: backend}
        self.traffic.end(name)  # a promotion or a rollback ends shadow and canary modes
        return replaced

    def remove_version(self, name: str, version: str) -> LoadedBackend:
        """Stop routing to ``version`` of backend ``name`` (not the serving one); it drains in :attr:`draining`
        until :meth:`drop` releases it.

        Raises:
            KeyError: no such loaded version.
            ValueError: it is the serving version.
        """
        backend = self.get(version_key(name, version))
        if self.backends[name].version == version:
            raise ValueError(f"version {version!r} is the one backend {name!r} serves: promote or roll back to "
                             "another version before unloading it")
        self.versions[name] = {v: b for v, b in self.versions[name].items() if v != version}
        self.traffic.end(name, version)
        if self.previous.get(name) == version:
            del self.previous[name]
        self.draining[version_key(name, version)] = backend
        return backend

    def drop(self, name: str, version: str) -> None:
        """Forget a drained version (its memory goes with the last reference)."""
        self.draining.pop(version_key(name, version), None)

    def why_not_loaded(self, name: str) -> str:
        """The one message for a backend this server does not serve, naming the ones it does."""
        loaded = f"loaded: {sorted(self.backends)}"
        if name not in BACKENDS:
            return f"unknown backend {name[:64]!r}; {loaded}"
        lacking = self.config.why_not_installed(name)
        if lacking:
            return f"backend {name!r} is not installed in this server ({lacking}); {loaded}"
        return f"backend {name!r} is not loaded in this server; {loaded}"

    def logits(self, name: str | None, pixels: np.ndarray) -> np.ndarray:
        """``float32[N, 10]`` logits for ``uint8[N, 28, 28]`` pixels (runs the model)."""
        return self.get(name).logits(pixels)

    def run_batch(self, name: str, pixels: np.ndarray, score: bool = False) -> Outputs:
        """One batch through the model, and its calibrated probabilities; with ``score`` (and a detector), its
        "not clothing" scores as well; all in the same thread, each in one vectorised pass over the batch rather than
        one per request on the event loop (service.batcher.RunBatch)."""
        backend = self.get(name)
        logits = backend.logits(pixels)
        return Outputs(logits, backend.ood_scores(logits, pixels) if score else None, backend.probabilities(logits))

    def ood_scores(self, name: str | None, logits: np.ndarray, images: np.ndarray) -> np.ndarray | None:
        """Per image, how clothing-like it is (fashion.ood); ``None`` when the model has no detector."""
        return self.get(name).ood_scores(logits, images)

    def describe(self, name: str | None, logits: np.ndarray, top_k: int | None = None,
                 pixels: np.ndarray | None = None, scores: np.ndarray | None = None,
                 probabilities: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Label, confidence and top-k per row of ``logits``, in input order.

        Args:
            name: the backend that computed ``logits`` (``None``: the default).
            logits: ``float32[N, 10]``.
            top_k: classes per answer (``None``: the configured number).
            pixels: when given, the ``uint8[N, 28, 28]`` input; each answer then carries its image as
                ``pixels`` (28 lists of 28 ints), so a client can see what the model received.
            scores: the "not clothing" scores of the batch (service.batcher.Outputs), for the fields
                ``ood_score`` and ``in_distribution``; without them (no detector), answers carry neither.
            probabilities: the calibrated probabilities the batch computed (service.batcher.Outputs); ``None``:
                computed here from ``logits``.
        """
        backend = self.get(name)
        if probabilities is None:
            probabilities = backend.probabilities(logits)
        answers = describe_predictions(probabilities, backend.name, backend.version,
                                       top_k or self.config.top_k, scores,
                                       backend.detector.threshold if backend.detector else None)
        if pixels is not None:
            for answer, image in zip(answers, pixels, strict=True):
                answer["pixels"] = image.tolist()
        return answers

    def info(self) -> dict[str, Any]:
        """Per configured backend: loaded or not, device/providers, version, checksums, accuracy, and every loaded
        version with its lineage."""
        backends = {}
        for name in self.config.backends:
            if name in self.backends:
                backends[name] = {**self.backends[name].info(), "versions": self.loaded_versions(name),
                                  "previous_version": self.previous.get(name),
                                  "traffic": self.traffic.describe(name)}
            else:
                backends[name] = {"loaded": False, "reason": self.skipped.get(name) or self.error or "loading"}
        return {"ready": self.ready, "default_backend": self.config.default_backend, "error": self.error,
                "gpu_present": has_nvidia_gpu(),
                "class_names": list(CLASS_NAMES), "backends": backends,
                # What this environment can run at all (the Bento's profile, docs/deploy.md), and why not the rest.
                "installed_backends": list(self.config.installed),
                "not_installed": {name: self.config.why_not_installed(name) for name, _ in self.config.not_installed}}

    def loaded_versions(self, name: str) -> list[dict[str, Any]]:
        """Every loaded version of backend ``name``, oldest first: its lineage and whether it serves."""
        serving = self.backends[name].version
        return [{**lineage(backend.manifest), "serving": version == serving, "sha256": backend.artifact["sha256"]}
                for version, backend in self.versions.get(name, {}).items()]
