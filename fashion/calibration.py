"""Temperature scaling and the calibration error it is judged by.

One scalar ``T`` divides every logit before the softmax (Guo et al. 2017, "On Calibration of Modern Neural
Networks", https://arxiv.org/abs/1706.04599): the ranking, hence every label, is unchanged; only how sure the
probabilities sound moves. ``T`` is fitted at export on the validation split and kept in the manifest.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

ECE_BINS = 15


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    return float(-(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(axis=1))).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (grid then golden refinement).

    A one-parameter fit: a log-spaced grid over [0.05, 20] finds the basin, a golden-section search polishes it.
    """
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))
    best = int(np.argmin([_nll(logits, labels, t) for t in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if _nll(logits, labels, a) < _nll(logits, labels, b):
            high = b
        else:
            low = a
    return float((low + high) / 2)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-width confidence bin: how many answers, their mean confidence and their accuracy."""
    return confidence_bins(probs.max(axis=1), probs.argmax(axis=1) == labels, bins)


def confidence_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """:func:`reliability_bins` from each answer's confidence and whether it was right (e.g. a service's answers)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for low, high in pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        rows.append({"low": float(low), "high": float(high), "count": int(inside.sum()),
                     "confidence": float(confidence[inside].mean()) if inside.any() else 0.0,
                     "accuracy": float(correct[inside].mean()) if inside.any() else 0.0})
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over ``bins`` equal-width bins."""
    return ece_of_bins(reliability_bins(probs, labels, bins))


def ece_of_bins(rows: list[dict[str, float]]) -> float:
    """The count-weighted mean gap between confidence and accuracy over the bins."""
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / sum(r["count"] for r in rows))
