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

from dataclasses import dataclass, fields, replace
from functools import cached_property
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
    """``T * logsumexp(logits / T)`` per row."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    top = z.max(axis=1)
    return np.float32(temperature) * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


# Images scored at a time: the service's largest batch. A dataset task or a large request scores thousands, and in
# chunks of this size the float32 rows stay in the core's cache (results/ood-cost-<machine>.md).
SCORE_CHUNK = 256
SIDE = 28  # images are SIDE x SIDE (fashion.contract); rows are flattened row by row
# Rows per matrix product of the pixels while serving: few enough that OpenBLAS computes the product in the calling
# thread. For larger ones it starts its own threads, which compete with ONNX Runtime's for the same cores: on a busy
# machine a batch's score then cost many times more per image (results/ood-cost-<machine>.md).
BLAS_ROWS = 16


@dataclass(frozen=True)
class PixelStats:
    """What every pixel view needs from a batch, in a few passes over it: each image as a ``float32[N, 784]`` row of
    grey levels (0-255) centred on its own mean, that mean, and the centred squared norm."""

    centred: np.ndarray
    means: np.ndarray
    squares: np.ndarray

    @classmethod
    def of(cls, pixels: np.ndarray) -> PixelStats:
        """From ``uint8[N, 28, 28]`` pixels."""
        rows = pixels.reshape(len(pixels), -1).astype(np.float32)
        means = rows.mean(axis=1)
        rows -= means[:, None]  # centred: the sums below then lose nothing in float32
        return cls(rows, means, np.vecdot(rows, rows))


def spread(stats: PixelStats) -> np.ndarray:
    """Standard deviation of each image's pixels, in grey levels (0 for a blank or constant image)."""
    return np.sqrt(stats.squares / np.float32(stats.centred.shape[1]))


def smoothness(pixels: np.ndarray | PixelStats) -> np.ndarray:
    """Mean correlation of horizontally and vertically neighbouring pixels; 0 for a constant image.

    Each correlation needs one sum of products over the flattened rows (neighbours are 1 or :data:`SIDE` apart);
    the other sums follow from the image's totals less its first or last row or column.
    """
    stats = pixels if isinstance(pixels, PixelStats) else PixelStats.of(pixels)
    c = stats.centred
    # Horizontal neighbours: every pair 1 apart in the flat row, less the pairs that wrap from one row to the next.
    products = np.vecdot(c[:, :-1], c[:, 1:]) - np.vecdot(c[:, SIDE - 1:-1:SIDE], c[:, SIDE::SIDE])
    horizontal = _correlation(stats, products, c[:, SIDE - 1::SIDE], c[:, ::SIDE])
    vertical = _correlation(stats, np.vecdot(c[:, :-SIDE], c[:, SIDE:]), c[:, -SIDE:], c[:, :SIDE])
    return (horizontal + vertical) / np.float32(2.0)


def _correlation(stats: PixelStats, products: np.ndarray, last: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Pearson correlation of the pixels without their ``last`` line (a) and without their ``first`` (b), the
    pairs' sum of products given; 0 where either side is constant."""
    count = np.float32(stats.centred.shape[1] - first.shape[1])
    total = stats.centred.sum(axis=1)
    sum_a, sum_b = total - last.sum(axis=1), total - first.sum(axis=1)
    var_a = stats.squares - np.vecdot(last, last) - sum_a * sum_a / count
    var_b = stats.squares - np.vecdot(first, first) - sum_b * sum_b / count
    cov = products - sum_a * sum_b / count
    # Below this (a thousandth of a grey level, squared, per pixel) a side is constant up to float32 rounding, as
    # a blank image is: no correlation to speak of.
    flat = np.float32(1e-6) * count
    norm = np.sqrt(np.maximum(var_a, 0) * np.maximum(var_b, 0))
    return np.where((var_a > flat) & (var_b > flat), cov / np.maximum(norm, flat), np.float32(0.0))


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

    @cached_property
    def _float32(self) -> dict[str, np.ndarray]:
        """The fitted arrays in the form serving uses: float32, and the precision as a whitening matrix, so the
        Mahalanobis distance of a row of logits to every class mean is one small matrix product."""
        eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(self.precision, dtype=np.float64))
        whiten = eigenvectors * np.sqrt(np.maximum(eigenvalues, 0.0))
        means = self.class_means @ whiten
        return {"projection": np.vstack([self.components, self.mean]).astype(np.float32),
                "component_sums": self.components.sum(axis=1).astype(np.float32),
                "mean_coeffs": (self.components @ self.mean).astype(np.float32),
                "mean_sum": np.float32(self.mean.sum()), "mean_norm": np.float32(self.mean @ self.mean),
                "inverse_variances": (1.0 / self.variances).astype(np.float32), "whiten": whiten.astype(np.float32),
                "white_means": means.astype(np.float32), "white_norms": (means ** 2).sum(axis=1).astype(np.float32),
                **_pixel_matrices(self.components, self.mean),
                "floors": 1.0 / np.array([max(len(getattr(self, f"ref_{name}")), 1) for name in WEIGHTS]),
                "tails": np.array([name in TAILS for name in WEIGHTS]),
                "weights": np.array(list(WEIGHTS.values())) / sum(WEIGHTS.values())}

    def likelihood(self, pixels: np.ndarray | PixelStats) -> np.ndarray:
        """Probabilistic-PCA log-likelihood of ``uint8[N, 28, 28]`` images, up to a constant.

        With ``x`` an image less the training mean: its coefficients are ``x @ components.T``, and as the
        components are orthonormal the residual's squared norm is ``|x|^2 - |coeffs|^2``, so one small matrix
        product of the centred rows does it all.
        """
        fitted = self._float32
        stats = pixels if isinstance(pixels, PixelStats) else PixelStats.of(pixels)
        # In 0-1 units, x = centred + (m - mean), m the image's own mean; the centred rows sum to 0. One product
        # gives the centred rows' coefficients and their dot product with the training mean.
        unit = np.float32(1.0 / 255.0)
        projected = (stats.centred @ fitted["projection"].T) * unit
        m = stats.means * unit
        coeffs = projected[:, :-1] + m[:, None] * fitted["component_sums"] - fitted["mean_coeffs"]
        size = np.float32(stats.centred.shape[1])
        norms = (stats.squares * unit * unit - 2 * projected[:, -1]
                 + (size * m - 2 * fitted["mean_sum"]) * m + fitted["mean_norm"])
        residual = np.maximum(norms - np.vecdot(coeffs, coeffs), 0)
        return -((coeffs * coeffs) @ fitted["inverse_variances"] + residual / np.float32(self.noise_variance))

    def logit_distance(self, logits: np.ndarray) -> np.ndarray:
        """Minus the smallest squared Mahalanobis distance of each row of logits to a class mean."""
        fitted = self._float32
        white = np.asarray(logits, dtype=np.float32) @ fitted["whiten"]
        distances = (np.vecdot(white, white)[:, None] - 2 * white @ fitted["white_means"].T
                     + fitted["white_norms"])
        return -np.maximum(distances.min(axis=1), 0)

    def views(self, logits: np.ndarray, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The five raw statistics (higher = more typical), keyed as :data:`WEIGHTS`; float32, one pixel pass."""
        stats = PixelStats.of(pixels)
        return {"energy": energy(logits, self.temperature), "logit_distance": self.logit_distance(logits),
                "likelihood": self.likelihood(stats), "spread": spread(stats), "smoothness": smoothness(stats)}

    def batch_views(self, logits: np.ndarray, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The same five statistics as :meth:`views` (equal within float32 rounding), in a fixed number of numpy
        calls whatever the batch: what serving pays per batch is mostly per call, not per image.

        One matrix product of the centred rows gives the PCA coefficients, the dot product with the training mean
        and each image's total; one gather gives the four lines the neighbour correlations leave out (last and
        first column, last and first row), whose sums and squares are two calls; the horizontal and vertical
        correlations are then computed side by side as one ``[N, 2]`` array.
        """
        fitted = self._float32
        stats = PixelStats.of(pixels)
        c, size, k = stats.centred, stats.centred.shape[1], COMPONENTS
        sums = _product_by_rows(c, fitted["linear"])
        unit = np.float32(1.0 / 255.0)
        m = stats.means * unit
        coeffs = sums[:, :k] * unit + m[:, None] * fitted["component_sums"] - fitted["mean_coeffs"]
        norms = (stats.squares * unit * unit - 2 * unit * sums[:, k]
                 + (np.float32(size) * m - 2 * fitted["mean_sum"]) * m + fitted["mean_norm"])
        residual = np.maximum(norms - np.vecdot(coeffs, coeffs), 0)
        likelihood = -((coeffs * coeffs) @ fitted["inverse_variances"] + residual / np.float32(self.noise_variance))
        # Lines 0-1 (last column, last row) are left out of side a, lines 2-3 (first column, first row) of side b.
        lines = c[:, fitted["lines"]]
        line_sums, line_squares = lines.sum(axis=2), np.vecdot(lines, lines)
        horizontal = np.vecdot(c[:, :-1], c[:, 1:]) - np.vecdot(c[:, SIDE - 1:-1:SIDE], c[:, SIDE::SIDE])
        products = np.stack([horizontal, np.vecdot(c[:, :-SIDE], c[:, SIDE:])], axis=1)
        total, squares, count = sums[:, k + 1:], stats.squares[:, None], np.float32(size - SIDE)
        sum_a, sum_b = total - line_sums[:, :2], total - line_sums[:, 2:]
        var_a = squares - line_squares[:, :2] - sum_a * sum_a / count
        var_b = squares - line_squares[:, 2:] - sum_b * sum_b / count
        cov = products - sum_a * sum_b / count
        flat = np.float32(1e-6) * count  # as in _correlation
        norm = np.sqrt(np.maximum(var_a, 0) * np.maximum(var_b, 0))
        correlations = np.where((var_a > flat) & (var_b > flat), cov / np.maximum(norm, flat), np.float32(0.0))
        return {"energy": energy(logits, self.temperature), "logit_distance": self.logit_distance(logits),
                "likelihood": likelihood, "spread": spread(stats), "smoothness": correlations.sum(axis=1) / 2}

    def score(self, logits: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Per image, 0-1: how typical of the validation images it is (see the module docs); ``float32[N]``.

        Vectorised over the batch: the service scores every batch the model runs in the model's thread
        (service.registry), so its cost per image is that of a few small matrix products.
        """
        if len(logits) > SCORE_CHUNK:  # a whole dataset: bounded temporaries, the same scores
            return np.concatenate([self.score(logits[i:i + SCORE_CHUNK], pixels[i:i + SCORE_CHUNK])
                                   for i in range(0, len(logits), SCORE_CHUNK)])
        total = np.zeros(len(logits))
        for name, values in self.batch_views(logits, pixels).items():
            total += self._rank_terms[name][np.searchsorted(getattr(self, f"ref_{name}"), values)]
        return np.exp(total).astype(np.float32)

    @cached_property
    def _rank_terms(self) -> dict[str, np.ndarray]:
        """Per view, its term of the score's logarithm for each possible rank: entry ``j`` is the weighted log of
        ``j / n`` (the share of the ``n`` references below a value; in the tails, ``min(1, TAIL_WEIGHT * j / n)``)
        plus the floor ``1 / n``. Scoring is then one look-up per view and image, with the same values."""
        fitted, terms = self._float32, {}
        for i, name in enumerate(WEIGHTS):
            count = len(getattr(self, f"ref_{name}"))
            ranks = np.arange(count + 1) / count
            if fitted["tails"][i]:
                ranks = np.minimum(1.0, TAIL_WEIGHT * ranks)
            terms[name] = fitted["weights"][i] * np.log(ranks + fitted["floors"][i])
        return terms

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """True where the score reaches the validated threshold."""
        return scores >= self.threshold

    def save(self, path: Path) -> None:
        """Write the detector's arrays to an ``.npz`` file (no pickles)."""
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})


def _pixel_matrices(components: np.ndarray, mean: np.ndarray) -> dict[str, np.ndarray]:
    """What :meth:`OodDetector.batch_views` needs beside the fitted arrays.

    ``linear`` (``784 x (COMPONENTS + 2)``, float32) takes a centred row to its PCA coefficients (in grey levels),
    its dot product with the training mean and its total; ``lines`` (``4 x 28``) indexes the last column, the last
    row, the first column and the first row of a flattened image.
    """
    size, k = SIDE * SIDE, COMPONENTS
    index = np.arange(size).reshape(SIDE, SIDE)
    linear = np.empty((size, k + 2), dtype=np.float32)
    linear[:, :k], linear[:, k], linear[:, k + 1] = components.T, mean, 1.0
    return {"linear": linear, "lines": np.stack([index[:, -1], index[-1], index[:, 0], index[0]])}


def _product_by_rows(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix`` in float32, :data:`BLAS_ROWS` rows per product."""
    out = np.empty((len(rows), matrix.shape[1]), dtype=np.float32)
    for i in range(0, len(rows), BLAS_ROWS):
        np.matmul(rows[i:i + BLAS_ROWS], matrix, out=out[i:i + BLAS_ROWS])
    return out


def load_detector(path: Path) -> OodDetector:
    """Read a detector written by :meth:`OodDetector.save`."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    expected = set(OodDetector.__dataclass_fields__)
    if set(arrays) != expected:
        raise ValueError(f"{path} is not a detector of this version (fields {sorted(set(arrays) ^ expected)} differ); "
                         "re-export the model (python -m export)")
    scalars = ("temperature", "threshold", "noise_variance")
    return OodDetector(**{k: (float(v) if k in scalars else v) for k, v in arrays.items()})


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
    partial = replace(partial, **references)
    threshold = float(np.quantile(partial.score(val_logits, val_pixels), 1.0 - target_tpr))
    return replace(partial, threshold=threshold)
