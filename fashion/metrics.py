"""Classification metrics on numpy arrays, shared by training, export and clients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fashion.contract import CLASS_NAMES, NUM_CLASSES, softmax


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of integer ``labels`` under ``logits`` (computed in float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """``(10, 10)`` counts; rows are true classes, columns predicted classes."""
    flat = np.asarray(labels, dtype=np.int64) * NUM_CLASSES + np.asarray(predictions, dtype=np.int64)
    return np.bincount(flat, minlength=NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)


def classification_report(logits: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix.

    Args:
        logits: ``(N, 10)`` model outputs.
        labels: ``(N,)`` true class ids.

    Returns:
        A JSON-ready dict.
    """
    predictions = np.asarray(logits).argmax(axis=1)
    cm = confusion_matrix(labels, predictions)
    true_pos = np.diag(cm).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(true_pos / cm.sum(axis=0))
        recall = np.nan_to_num(true_pos / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return {
        "accuracy": float((predictions == labels).mean()),
        "loss": cross_entropy(logits, labels),
        "count": len(labels),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(CLASS_NAMES, precision, recall, f1, cm.sum(axis=1), strict=True)
        },
        "confusion_matrix": cm.tolist(),
    }


@dataclass(frozen=True)
class Agreement:
    """How closely two models' answers on the same images agree: the one parity metric, for the export's check of
    each artifact against its source model (export.pipeline) and the service's /parity (service.parity)."""

    images: int
    top1_agreement: float
    max_abs_prob_diff: float
    disagreements: np.ndarray  # indices of the images whose top-1 class differs

    def within(self, tolerance: float) -> bool:
        """Same top-1 on every image and every probability within ``tolerance``."""
        return not len(self.disagreements) and self.max_abs_prob_diff <= tolerance


def agreement(logits: np.ndarray, reference: np.ndarray) -> Agreement:
    """Compare ``float32[N, 10]`` logits with ``reference``'s on the same ``N`` images (uncalibrated softmax)."""
    if len(logits) != len(reference):
        raise ValueError(f"answers for different numbers of images: {len(logits)} and {len(reference)}")
    disagree = np.flatnonzero(logits.argmax(1) != reference.argmax(1))
    max_diff = float(np.abs(softmax(logits) - softmax(reference)).max(initial=0.0))
    return Agreement(len(logits), 1.0 - len(disagree) / max(len(logits), 1), max_diff, disagree)
