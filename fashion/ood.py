"""Does an image look like Fashion-MNIST at all? A score per image and a validated threshold.

Chosen by measurement (``python -m benchmark.ood``, results/ood.md): the logits alone (maximum softmax
probability, energy) separate handwritten digits but not blank, constant or noise images, which this MLP
classifies confidently. So the score combines three views, each turned into a rank among the validation
images (the share of validation images that look less typical):

* **energy** of the calibrated logits, ``T * logsumexp(logits / T)`` (Liu et al. 2020,
  https://arxiv.org/abs/2010.03759): high for images like the training data;
* **PCA likelihood** of the pixels under a probabilistic PCA fitted on the training images (catches noise and
  textures the logits cannot see);
* **pixel spread** (standard deviation): a constant or blank image has none, every garment has plenty.

``score = min(rank(energy), min(1, w * rank(likelihood)), min(1, w * rank(spread)))``: the energy decides,
the two pixel views only veto images in their extreme tails (``w`` = :data:`TAIL_WEIGHT`). The threshold is the
score's validation quantile for the chosen true-positive rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

COMPONENTS = 10
TAIL_WEIGHT = 10.0
# Validation TPR the threshold is set for: 95.5%, half a point above the 95% target, so that the test set (another
# sample of the same distribution) stays at or above 95%.
TARGET_TPR = 0.955
METHOD = "min(rank energy, tail-ranks of PCA likelihood and pixel spread)"


def energy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``T * logsumexp(logits / T)`` per row (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1)
    return temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


@dataclass(frozen=True)
class OodDetector:
    """A fitted detector: PCA of the training pixels and the validation reference values (sorted)."""

    temperature: float
    threshold: float
    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    noise_variance: float
    ref_energy: np.ndarray
    ref_likelihood: np.ndarray
    ref_spread: np.ndarray

    def likelihood(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilistic-PCA log-likelihood of ``uint8[N, 28, 28]`` images, up to a constant."""
        x = pixels.reshape(len(pixels), -1).astype(np.float64) / 255.0 - self.mean
        coeffs = x @ self.components.T
        residual = x - coeffs @ self.components
        return -((coeffs ** 2 / self.variances).sum(axis=1) + (residual ** 2).sum(axis=1) / self.noise_variance)

    def score(self, logits: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Per image, 0-1: how typical of the validation images it is (see the module docs)."""
        spread = pixels.reshape(len(pixels), -1).std(axis=1)
        ranks = [_rank(self.ref_energy, energy(logits, self.temperature)),
                 np.minimum(1.0, TAIL_WEIGHT * _rank(self.ref_likelihood, self.likelihood(pixels))),
                 np.minimum(1.0, TAIL_WEIGHT * _rank(self.ref_spread, spread))]
        return np.minimum.reduce(ranks)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """True where the score reaches the validated threshold."""
        return scores >= self.threshold

    def save(self, path: Path) -> None:
        """Write the detector's arrays to an ``.npz`` file (no pickles)."""
        np.savez(path, temperature=self.temperature, threshold=self.threshold, mean=self.mean,
                 components=self.components, variances=self.variances, noise_variance=self.noise_variance,
                 ref_energy=self.ref_energy, ref_likelihood=self.ref_likelihood, ref_spread=self.ref_spread)


def _rank(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of the (sorted) reference values below each value."""
    return np.searchsorted(reference, values) / len(reference)


def load_detector(path: Path) -> OodDetector:
    """Read a detector written by :meth:`OodDetector.save`."""
    with np.load(path, allow_pickle=False) as data:
        fields = {name: data[name] for name in data.files}
    scalars = ("temperature", "threshold", "noise_variance")
    return OodDetector(**{k: (float(v) if k in scalars else v) for k, v in fields.items()})


def fit_detector(train_pixels: np.ndarray, val_pixels: np.ndarray, val_logits: np.ndarray, temperature: float,
                 target_tpr: float = TARGET_TPR) -> OodDetector:
    """Fit the PCA on training images, take reference values and the threshold from the validation images."""
    x = train_pixels.reshape(len(train_pixels), -1).astype(np.float64) / 255.0
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    power = singular ** 2 / len(x)
    partial = OodDetector(temperature, 0.0, mean, vt[:COMPONENTS], power[:COMPONENTS],
                          float(power[COMPONENTS:].sum() / (x.shape[1] - COMPONENTS)),
                          np.sort(energy(val_logits, temperature)), np.empty(0), np.empty(0))
    partial = OodDetector(**{**partial.__dict__, "ref_likelihood": np.sort(partial.likelihood(val_pixels)),
                             "ref_spread": np.sort(val_pixels.reshape(len(val_pixels), -1).std(axis=1))})
    threshold = float(np.quantile(partial.score(val_logits, val_pixels), 1.0 - target_tpr))
    return OodDetector(**{**partial.__dict__, "threshold": threshold})
