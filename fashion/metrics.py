"""Classification metrics on numpy arrays, shared by training, export, the service and clients.

Parity between backends (:func:`parity_report`) is judged by what the two backends of a pair are:

* ``same-model``: two float32 artifacts of one exported model (same name and content version).
  The export verified each against the source model (identical top-1 on every test image,
  probabilities within 1e-5), so they must agree on every image's top-1 and within the tolerance
  in every probability: the pair is ``consistent`` or not.
* ``quantized``: the int8 artifact against a float32 artifact of its own model. Quantization
  changes some answers: reported, not judged.
* ``cross-model``: the PyTorch- and the TensorFlow-trained models are different models: reported,
  not judged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from fashion.backends import BACKENDS
from fashion.contract import CLASS_NAMES, NUM_CLASSES, softmax

# The export verified each float32 artifact within 1e-5 of its source model; two of them within 1e-4.
PARITY_TOLERANCE = 1e-4


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


@dataclass(frozen=True)
class Identity:
    """What a backend serves: the exported model (``name:version``) and the artifact's precision."""

    model: str
    precision: str

    @classmethod
    def of(cls, backend: str, manifest: dict[str, Any]) -> Identity:
        """From the backend's name and its model's manifest."""
        entry = manifest["artifacts"][BACKENDS[backend].artifact]
        precision = "int8" if "int8" in entry["format"] else "float32"
        return cls(f"{manifest['name']}:{manifest['version']}", precision)


def relation(a: Identity, b: Identity) -> str:
    """``same-model``, ``quantized`` or ``cross-model`` (see the module docstring)."""
    if a.model != b.model:
        return "cross-model"
    return "same-model" if a.precision == b.precision == "float32" else "quantized"


def parity_report(logits: dict[str, np.ndarray], identities: dict[str, Identity],
                  tol: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Compare every pair of backends' answers on the same images (:func:`agreement`).

    Args:
        logits: ``float32[N, 10]`` per backend name, all for the same ``N`` images in the same order.
        identities: per backend name, the model and precision it serves.
        tol: the largest probability difference a ``same-model`` pair may show.

    Returns:
        ``images``, ``tolerance``, ``consistent`` (every same-model pair is), ``models`` (per model:
        its backends and whether they are consistent) and ``pairs`` (per pair: backends, relation,
        top-1 agreement, max absolute probability difference, the disagreeing image indices, and
        ``consistent`` for same-model pairs).

    Raises:
        ValueError: the backends answered different numbers of images.
    """
    counts = {len(values) for values in logits.values()}
    if len(counts) > 1:
        raise ValueError(f"backends answered different numbers of images: {sorted(counts)}")
    pairs = []
    for a, b in itertools.combinations(logits, 2):
        found = agreement(logits[a], logits[b])
        pair: dict[str, Any] = {
            "backends": [a, b], "relation": relation(identities[a], identities[b]),
            "top1_agreement": found.top1_agreement, "max_abs_prob_diff": found.max_abs_prob_diff,
            "disagreements": found.disagreements.tolist(),
        }
        if pair["relation"] == "same-model":
            pair["consistent"] = found.within(tol)
        pairs.append(pair)
    models: dict[str, dict[str, Any]] = {}
    for name, identity in identities.items():
        if name in logits:
            models.setdefault(identity.model, {"backends": [], "consistent": True})["backends"].append(name)
    for pair in pairs:
        if not pair.get("consistent", True):
            models[identities[pair["backends"][0]].model]["consistent"] = False
    return {"images": counts.pop() if counts else 0, "tolerance": tol,
            "consistent": all(m["consistent"] for m in models.values()), "models": models, "pairs": pairs}


def parity_failures(report: dict[str, Any]) -> list[str]:
    """One line per same-model pair of :func:`parity_report` that is not consistent."""
    lines = []
    for pair in report["pairs"]:
        if pair.get("consistent") is False:
            a, b = pair["backends"]
            lines.append(f"{a} vs {b}: top-1 agreement {pair['top1_agreement']:.4f} (disagreeing images "
                         f"{pair['disagreements'][:10]}), max |dp| {pair['max_abs_prob_diff']:.2e} "
                         f"(tolerance {report['tolerance']:g})")
    return lines
