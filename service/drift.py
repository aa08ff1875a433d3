"""Whether the traffic still looks like the test set: drift gauges over a rolling window (docs/observability.md).

Per backend version, over the last ``window`` images answered, /metrics shows

* the class mix (``fashion_drift_class_ratio``) and its Jensen-Shannon divergence from the reference mix, in bits
  (0: the same mix, 1: no class in common; ``fashion_drift_class_js_divergence_bits``);
* the mean calibrated confidence and its shift from the reference (``fashion_drift_mean_confidence_ratio``,
  ``..._shift_ratio``);
* the share of images the "not clothing" detector flagged (fashion.ood) and its shift from the reference
  (``fashion_drift_not_clothing_ratio``, ``..._shift_ratio``), over the images that were scored (a compact
  ``application/x-npy`` answer is not scored);
* the references themselves and the images in the window, so that an alert can ask for a full window.

The reference comes from the model's manifest, written at export from the test set: the class mix of Fashion-MNIST's
test set (1,000 images of each class), the test accuracy as the mean confidence (the export calibrates the
confidences, so on the test set their mean is the accuracy within the calibration error the manifest records), and
the share of test images the detector flags (one minus its ``test_tpr``).

The answer path only appends the batch's outputs to a queue (:meth:`DriftMonitor.record`); a thread folds them into
the windows and sets the gauges every ``interval_s`` (:meth:`DriftMonitor.refresh`), so the cost per request is one
append.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from fashion.contract import CLASS_NAMES, NUM_CLASSES, softmax


@dataclass(frozen=True)
class Reference:
    """What the test set looked like to one model version."""

    class_mix: np.ndarray  # float[NUM_CLASSES], summing to 1
    mean_confidence: float
    not_clothing: float | None  # None: the model has no detector

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> Reference:
        """The reference recorded in an export's manifest (module docstring)."""
        accuracy = manifest.get("source_test_accuracy") or manifest.get("training_test_accuracy")
        ood = manifest.get("ood") or {}
        return cls(np.full(NUM_CLASSES, 1 / NUM_CLASSES), float(accuracy),
                   1 - float(ood["test_tpr"]) if "test_tpr" in ood else None)


def js_divergence_bits(p: np.ndarray, q: np.ndarray) -> float:
    """The Jensen-Shannon divergence of two distributions, in bits (0 to 1)."""
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nonzero = a > 0
        return float(np.sum(a[nonzero] * np.log2(a[nonzero] / m[nonzero])))

    return max(0.0, (kl(p) + kl(q)) / 2)


class Window:
    """The last ``size`` images of one backend version: class, confidence, and flagged or not (-1: not scored)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.classes = np.zeros(size, np.int8)
        self.confidence = np.zeros(size, np.float32)
        self.flagged = np.full(size, -1, np.int8)
        self.next = 0
        self.filled = 0

    def add(self, classes: np.ndarray, confidence: np.ndarray, flagged: np.ndarray) -> None:
        """Append rows, the oldest falling out."""
        for column, values in ((self.classes, classes), (self.confidence, confidence), (self.flagged, flagged)):
            values = values[-self.size:]
            positions = (self.next + np.arange(len(values))) % self.size
            column[positions] = values
        count = min(len(classes), self.size)
        self.next = (self.next + count) % self.size
        self.filled = min(self.filled + count, self.size)

    def summary(self) -> dict[str, Any]:
        """The window's class mix, mean confidence and "not clothing" share (``None`` when nothing was scored)."""
        classes, confidence, flagged = (c[:self.filled] for c in (self.classes, self.confidence, self.flagged))
        scored = flagged[flagged >= 0]
        return {"images": self.filled,
                "class_mix": np.bincount(classes, minlength=NUM_CLASSES) / max(self.filled, 1),
                "mean_confidence": float(confidence.mean()) if self.filled else 0.0,
                "not_clothing": float(scored.mean()) if len(scored) else None}


@functools.cache
def metrics() -> dict[str, Any]:
    """Prometheus gauges for drift, created once per process (BentoML serves them on /metrics)."""
    from prometheus_client import Gauge

    labels = ("backend", "version")

    def gauge(name: str, text: str, extra: tuple[str, ...] = ()) -> Any:
        return Gauge(name, text, labels + extra, multiprocess_mode="livemostrecent")

    return {
        "images": gauge("fashion_drift_window_images", "Images in the drift window"),
        "class": gauge("fashion_drift_class_ratio", "Share of the window's images answered as each class",
                       ("class_name",)),
        "class_js": gauge("fashion_drift_class_js_divergence_bits", "Jensen-Shannon divergence of the window's "
                          "class mix from the test set's, in bits (0-1)"),
        "confidence": gauge("fashion_drift_mean_confidence_ratio", "Mean calibrated confidence over the window"),
        "confidence_ref": gauge("fashion_drift_reference_mean_confidence_ratio",
                                "Mean calibrated confidence on the test set"),
        "confidence_shift": gauge("fashion_drift_mean_confidence_shift_ratio",
                                  "Window's mean confidence minus the test set's"),
        "not_clothing": gauge("fashion_drift_not_clothing_ratio",
                              "Share of the window's scored images flagged 'not clothing'"),
        "not_clothing_ref": gauge("fashion_drift_reference_not_clothing_ratio",
                                  "Share of the test set flagged 'not clothing'"),
        "not_clothing_shift": gauge("fashion_drift_not_clothing_shift_ratio",
                                    "Window's 'not clothing' share minus the test set's"),
    }


class DriftMonitor:
    """The drift windows of every backend version, fed from the answer path and folded in by a thread."""

    def __init__(self, window: int, interval_s: float) -> None:
        """
        Args:
            window: images per rolling window (per backend version).
            interval_s: seconds between two refreshes of the gauges by :meth:`start`'s thread.
        """
        self.window = window
        self.interval_s = interval_s
        self.pending: deque[tuple[Any, np.ndarray, np.ndarray | None]] = deque()
        self.windows: dict[tuple[str, str], tuple[Window, Reference]] = {}
        self.stopped = threading.Event()
        self.lock = threading.Lock()  # refresh runs in the thread and, in tests, in the caller

    def record(self, backend: Any, logits: np.ndarray, scores: np.ndarray | None) -> None:
        """The answer path's whole cost: queue one answered batch of ``backend`` (a fashion.servable.Servable)."""
        self.pending.append((backend, logits, scores))

    def refresh(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Fold the queued answers into the windows and set the gauges of those that changed; their summaries.

        The answers of one backend version are folded in one step, not one batch at a time: the thread holds the
        interpreter lock while it works, and thousands of small steps would stall the event loop that answers
        requests (its tail latency grew by the length of a refresh).
        """
        with self.lock:
            grouped: dict[tuple[str, str], list[tuple[Any, np.ndarray, np.ndarray | None]]] = {}
            while self.pending:
                answer = self.pending.popleft()
                grouped.setdefault((answer[0].name, answer[0].version), []).append(answer)
            for key, answers in grouped.items():
                backend = answers[0][0]
                if key not in self.windows:
                    self.windows[key] = (Window(self.window), Reference.of(backend.manifest))
                self.fold(self.windows[key][0], backend, answers)
            return {key: self.publish(key) for key in grouped}

    @staticmethod
    def fold(window: Window, backend: Any, answers: list[tuple[Any, np.ndarray, np.ndarray | None]]) -> None:
        """Add one backend version's queued answers to its window, newest last (-1: an image not scored)."""
        logits = np.concatenate([a[1] for a in answers])
        probabilities = softmax(logits, backend.temperature)
        if backend.detector is None:
            flagged = np.full(len(logits), -1, np.int8)
        else:
            scores = np.concatenate([np.full(len(a[1]), np.nan, np.float32) if a[2] is None
                                     else np.asarray(a[2], np.float32).reshape(-1) for a in answers])
            flagged = np.where(np.isnan(scores), -1, scores < backend.detector.threshold).astype(np.int8)
        window.add(probabilities.argmax(axis=1).astype(np.int8), probabilities.max(axis=1), flagged)

    def publish(self, key: tuple[str, str]) -> dict[str, Any]:
        """Set one window's gauges; its summary with the divergences."""
        window, reference = self.windows[key]
        summary = window.summary()
        summary["class_js"] = js_divergence_bits(summary["class_mix"], reference.class_mix)
        summary["confidence_shift"] = summary["mean_confidence"] - reference.mean_confidence
        series = metrics()
        series["images"].labels(*key).set(summary["images"])
        for name, share in zip(CLASS_NAMES, summary["class_mix"], strict=True):
            series["class"].labels(*key, name).set(share)
        series["class_js"].labels(*key).set(summary["class_js"])
        series["confidence"].labels(*key).set(summary["mean_confidence"])
        series["confidence_ref"].labels(*key).set(reference.mean_confidence)
        series["confidence_shift"].labels(*key).set(summary["confidence_shift"])
        if summary["not_clothing"] is not None and reference.not_clothing is not None:
            summary["not_clothing_shift"] = summary["not_clothing"] - reference.not_clothing
            series["not_clothing"].labels(*key).set(summary["not_clothing"])
            series["not_clothing_ref"].labels(*key).set(reference.not_clothing)
            series["not_clothing_shift"].labels(*key).set(summary["not_clothing_shift"])
        return summary

    def start(self) -> DriftMonitor:
        """Refresh every ``interval_s`` in a daemon thread until :meth:`close`."""
        def loop() -> None:
            while not self.stopped.wait(self.interval_s):
                self.refresh()

        threading.Thread(target=loop, name="drift", daemon=True).start()
        return self

    def close(self) -> None:
        """Stop the refreshing thread."""
        self.stopped.set()
