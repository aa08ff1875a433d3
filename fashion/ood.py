"""Does an image look like Fashion-MNIST at all? A score per image and a validated threshold.

Chosen by measurement (``python -m benchmark.ood``, results/ood.md). The logits alone separate handwritten
digits (energy) but not blank, constant, noise or text images, which this MLP classifies confidently; the pixels
alone catch those but not the digits. So the score combines five views of what the service already has for every
backend (the logits and the 28 x 28 input: no backend needs to expose a hidden layer), each turned into a rank
among the validation images (the share of validation images that look less typical):

* **energy** of the calibrated logits, ``T * logsumexp(logits / T)`` (Liu et al. 2020,
  https://arxiv.org/abs/2010.03759): high for images like the training data;
* **logit distance**: minus the smallest Mahalanobis distance of the logits to a class mean (one covariance
  shared by the classes, Lee et al. 2018, https://arxiv.org/abs/1807.03888, applied to the output layer);
* three pixel views that only count in their extreme tails (``min(1, w * rank)``, ``w`` = :data:`TAIL_WEIGHT`):
  the **PCA likelihood** under a probabilistic PCA of the training images, the **pixel spread** (a blank or
  constant image has none) and the **smoothness** (correlation of neighbouring pixels: noise and text have
  little, every garment plenty).

``score`` is the weighted geometric mean of the five ranks (:data:`WEIGHTS`): 1 for the most typical image, near
0 when any view puts it below every validation image. The threshold is the score's validation quantile for the
chosen true-positive rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

COMPONENTS = 10
TAIL_WEIGHT = 10.0
# Energy counts twice: it carries the digits, the other views the sanity cases (results/ood.md, method table).
WEIGHTS = {"energy": 2.0, "logit_distance": 1.0, "likelihood": 1.0, "spread": 1.0, "smoothness": 1.0}
TAILS = ("likelihood", "spread", "smoothness")
# Validation TPR the threshold is set for: 95.5%, half a point above the 95% target, so that the test set (another
# sample of the same distribution) stays at or above 95%.
TARGET_TPR = 0.955
METHOD = "weighted geometric mean of validation ranks: energy x2, logit distance, tails of PCA, spread, smoothness"


def energy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``T * logsumexp(logits / T)`` per row (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1)
    return temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def smoothness(pixels: np.ndarray) -> np.ndarray:
    """Mean correlation of horizontally and vertically neighbouring pixels; 0 for a constant image."""
    x = pixels.astype(np.float64).reshape(len(pixels), *pixels.shape[-2:])
    pairs = [(x[:, :, :-1], x[:, :, 1:]), (x[:, :-1], x[:, 1:])]
    return np.mean([_correlation(a.reshape(len(a), -1), b.reshape(len(b), -1)) for a, b in pairs], axis=0)


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(norm > 0, (a * b).sum(axis=1) / np.maximum(norm, 1e-12), 0.0)


@dataclass(frozen=True)
class OodDetector:
    """A fitted detector: PCA of the training pixels, class means of the training logits, validation references."""

    temperature: float
    threshold: float
    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    noise_variance: float
    class_means: np.ndarray
    precision: np.ndarray
    ref_energy: np.ndarray
    ref_logit_distance: np.ndarray
    ref_likelihood: np.ndarray
    ref_spread: np.ndarray
    ref_smoothness: np.ndarray

    def likelihood(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilistic-PCA log-likelihood of ``uint8[N, 28, 28]`` images, up to a constant."""
        x = pixels.reshape(len(pixels), -1).astype(np.float64) / 255.0 - self.mean
        coeffs = x @ self.components.T
        residual = x - coeffs @ self.components
        return -((coeffs ** 2 / self.variances).sum(axis=1) + (residual ** 2).sum(axis=1) / self.noise_variance)

    def logit_distance(self, logits: np.ndarray) -> np.ndarray:
        """Minus the smallest squared Mahalanobis distance of each row of logits to a class mean."""
        d = np.asarray(logits, dtype=np.float64)[:, None, :] - self.class_means[None]
        return -np.einsum("nci,ij,ncj->nc", d, self.precision, d).min(axis=1)

    def views(self, logits: np.ndarray, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The five raw statistics (higher = more typical), keyed as :data:`WEIGHTS`."""
        return {"energy": energy(logits, self.temperature), "logit_distance": self.logit_distance(logits),
                "likelihood": self.likelihood(pixels), "spread": pixels.reshape(len(pixels), -1).std(axis=1),
                "smoothness": smoothness(pixels)}

    def score(self, logits: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Per image, 0-1: how typical of the validation images it is (see the module docs)."""
        total = np.zeros(len(logits))
        for name, values in self.views(logits, pixels).items():
            reference = getattr(self, f"ref_{name}")
            rank = _rank(reference, values)
            if name in TAILS:
                rank = np.minimum(1.0, TAIL_WEIGHT * rank)
            total += WEIGHTS[name] * np.log(rank + 1.0 / len(reference))
        return np.exp(total / sum(WEIGHTS.values()))

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """True where the score reaches the validated threshold."""
        return scores >= self.threshold

    def save(self, path: Path) -> None:
        """Write the detector's arrays to an ``.npz`` file (no pickles)."""
        np.savez(path, **self.__dict__)


def _rank(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of the (sorted) reference values below each value."""
    return np.searchsorted(reference, values) / len(reference)


def load_detector(path: Path) -> OodDetector:
    """Read a detector written by :meth:`OodDetector.save`."""
    with np.load(path, allow_pickle=False) as data:
        fields = {name: data[name] for name in data.files}
    expected = set(OodDetector.__dataclass_fields__)
    if set(fields) != expected:
        raise ValueError(f"{path} is not a detector of this version (fields {sorted(set(fields) ^ expected)} differ); "
                         "re-export the model (python -m export)")
    scalars = ("temperature", "threshold", "noise_variance")
    return OodDetector(**{k: (float(v) if k in scalars else v) for k, v in fields.items()})


def fit_logit_classes(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means of the logits and the precision (inverse) of their shared covariance."""
    logits = np.asarray(logits, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([logits[labels == c].mean(axis=0) for c in classes])
    centred = logits - means[np.searchsorted(classes, labels)]
    return means, np.linalg.pinv(np.cov(centred.T))


def fit_pca(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, top :data:`COMPONENTS` directions, their variances and the residual variance of the pixels."""
    x = pixels.reshape(len(pixels), -1).astype(np.float64) / 255.0
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    power = singular ** 2 / len(x)
    return mean, vt[:COMPONENTS], power[:COMPONENTS], float(power[COMPONENTS:].sum() / (x.shape[1] - COMPONENTS))


def fit_detector(train_pixels: np.ndarray, train_logits: np.ndarray, train_labels: np.ndarray,
                 val_pixels: np.ndarray, val_logits: np.ndarray, temperature: float,
                 target_tpr: float = TARGET_TPR) -> OodDetector:
    """Fit the PCA and the class means on training images; references and the threshold on validation images."""
    empty = {f"ref_{name}": np.empty(0) for name in WEIGHTS}
    partial = OodDetector(temperature, 0.0, *fit_pca(train_pixels), *fit_logit_classes(train_logits, train_labels),
                          **empty)
    references = {f"ref_{name}": np.sort(v) for name, v in partial.views(val_logits, val_pixels).items()}
    partial = OodDetector(**{**partial.__dict__, **references})
    threshold = float(np.quantile(partial.score(val_logits, val_pixels), 1.0 - target_tpr))
    return OodDetector(**{**partial.__dict__, "threshold": threshold})
