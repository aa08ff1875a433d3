"""Temperature scaling, ECE and the "not clothing" fields of an answer, on synthetic numbers with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from fashion.calibration import (
    confidence_bins,
    ece_of_bins,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from fashion.contract import describe_predictions, softmax, temperature_of
from fashion.ood import WEIGHTS, energy, fit_detector, fit_logit_classes, load_detector, smoothness


def sample(temperature: float, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from ``softmax(logits / temperature)``: ``temperature`` is the right answer."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 10)).astype(np.float32)
    probs = softmax(logits, temperature).astype(np.float64)
    labels = np.array([rng.choice(10, p=p / p.sum()) for p in probs])
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_true_temperature(temperature):
    logits, labels = sample(temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.05)


def test_calibrated_labels_have_small_ece_and_overconfident_ones_do_not():
    logits, labels = sample(2.0)
    assert expected_calibration_error(softmax(logits, 2.0), labels) < 0.015
    assert expected_calibration_error(softmax(logits), labels) > 0.05


def test_ece_of_a_known_case():
    """Two bins: 0.95 confidence, half right (gap 0.45); 0.55 confidence, all right (gap 0.45): ECE 0.45."""
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.45)
    assert sum(b["count"] for b in reliability_bins(probs, labels)) == 4
    # the same from what a service answers: each answer's confidence and whether it was right
    assert ece_of_bins(confidence_bins([0.95, 0.95, 0.55, 0.55], [True, False, True, True])) == pytest.approx(0.45)


def test_temperature_keeps_the_ranking_and_softens():
    logits = np.array([[3.0, 1.0, -2.0]])
    hot, cold = softmax(logits, 2.0), softmax(logits)
    assert hot.argmax() == cold.argmax() and hot.max() < cold.max()
    assert np.allclose(hot.sum(), 1.0)
    assert temperature_of({}) == 1.0 and temperature_of({"calibration": {"temperature": 1.3}}) == 1.3


def test_energy_is_logsumexp_scaled():
    logits = np.array([[0.0, 0.0], [10.0, -10.0]])
    assert energy(logits, 1.0) == pytest.approx([np.log(2), 10.0], abs=1e-6)


def test_answers_carry_the_ood_fields_when_scored():
    probs = softmax(np.array([[2.0, 0.0] + [0.0] * 8, [0.0] * 9 + [5.0]]))
    plain = describe_predictions(probs, "b", "v")
    assert "in_distribution" not in plain[0]
    scored = describe_predictions(probs, "b", "v", ood_scores=np.array([0.5, 0.01]), ood_threshold=0.04)
    assert [a["in_distribution"] for a in scored] == [True, False]
    assert [a["ood_score"] for a in scored] == [0.5, 0.01]


def test_smoothness_of_known_images():
    """Neighbour correlation: 1 for a ramp, about 0 for noise, -1 for a checkerboard, 0 for a constant image."""
    ramp = np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1))
    ramp = np.minimum(ramp, ramp.T)  # varies along both axes
    checker = ((np.indices((28, 28)).sum(axis=0) % 2) * 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    got = smoothness(np.stack([ramp, checker, noise, np.full((28, 28), 77, np.uint8)]))
    assert got[0] > 0.9 and got[1] == pytest.approx(-1.0) and abs(got[2]) < 0.1 and got[3] == 0.0


def test_logit_classes_are_the_means_and_the_shared_precision():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 5000)
    logits = rng.normal(0, 2.0, (10000, 3)) + np.where(labels[:, None] == 1, 10.0, 0.0)
    means, precision = fit_logit_classes(logits, labels)
    assert means == pytest.approx(np.array([[0, 0, 0], [10, 10, 10]]), abs=0.1)
    assert precision == pytest.approx(np.eye(3) / 4.0, abs=0.01)


def blobs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth light blobs of random size and place on black: a stand-in for garments."""
    yy, xx = np.indices((28, 28))
    cy, cx, r = rng.uniform(10, 18, n), rng.uniform(10, 18, n), rng.uniform(5, 10, n)
    d = np.hypot(yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]) / r[:, None, None]
    return (255 * np.clip(1.2 - d, 0, 1)).astype(np.uint8)


def test_detector_flags_what_the_validation_never_showed(tmp_path):
    """Fitted on blobs with class-shaped logits: held-out blobs pass at the target rate; blank, constant and
    noise images score below the threshold; the saved detector scores the same after loading."""
    rng = np.random.default_rng(0)
    def logits_of(n):
        labels = rng.integers(0, 10, n)
        return rng.normal(0, 1, (n, 10)) + 6 * np.eye(10)[labels], labels
    (train_logits, train_labels), (val_logits, _) = logits_of(4000), logits_of(2000)
    detector = fit_detector(blobs(rng, 4000), train_logits, train_labels, blobs(rng, 2000), val_logits, 1.0,
                            target_tpr=0.95)
    held_out, held_logits = blobs(rng, 2000), logits_of(2000)[0]
    assert detector.in_distribution(detector.score(held_logits, held_out)).mean() == pytest.approx(0.95, abs=0.02)
    junk = np.stack([np.zeros((28, 28)), np.full((28, 28), 200), rng.integers(0, 256, (28, 28))]).astype(np.uint8)
    junk_scores = detector.score(logits_of(3)[0], junk)
    assert not detector.in_distribution(junk_scores).any()
    detector.save(tmp_path / "ood.npz")
    assert load_detector(tmp_path / "ood.npz").score(held_logits, held_out) == pytest.approx(
        detector.score(held_logits, held_out))


def test_a_detector_of_another_version_is_refused_with_the_fix(tmp_path):
    np.savez(tmp_path / "ood.npz", temperature=1.0, threshold=0.1, mean=np.zeros(784))
    with pytest.raises(ValueError, match="re-export"):
        load_detector(tmp_path / "ood.npz")


def reference_score(detector, logits: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The score as the module docs define it, written plainly in float64: the batch path must agree with it."""
    x = pixels.reshape(len(pixels), -1).astype(np.float64)
    z = logits.astype(np.float64) / detector.temperature
    centred = x / 255.0 - detector.mean
    coeffs = centred @ detector.components.T
    residual = centred - coeffs @ detector.components
    d = logits.astype(np.float64)[:, None, :] - detector.class_means[None]

    def correlation(a, b):
        a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(axis=1, keepdims=True)
        b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(axis=1, keepdims=True)
        norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
        return np.where(norm > 0, (a * b).sum(axis=1) / np.maximum(norm, 1e-12), 0.0)

    images = x.reshape(-1, 28, 28)
    views = {
        "energy": detector.temperature * (z.max(axis=1) + np.log(np.exp(z - z.max(axis=1)[:, None]).sum(axis=1))),
        "logit_distance": -np.einsum("nci,ij,ncj->nc", d, detector.precision, d).min(axis=1),
        "likelihood": -((coeffs ** 2 / detector.variances).sum(axis=1)
                        + (residual ** 2).sum(axis=1) / detector.noise_variance),
        "spread": x.std(axis=1),
        "smoothness": (correlation(images[:, :, :-1], images[:, :, 1:])
                       + correlation(images[:, :-1], images[:, 1:])) / 2,
    }
    total = np.zeros(len(logits))
    for name, values in views.items():
        reference = getattr(detector, f"ref_{name}")
        rank = np.searchsorted(reference, values) / len(reference)
        if name in ("likelihood", "spread", "smoothness"):
            rank = np.minimum(1.0, 10.0 * rank)
        total += WEIGHTS[name] * np.log(rank + 1.0 / len(reference))
    return np.exp(total / sum(WEIGHTS.values()))


def test_the_batch_score_is_the_documented_score_and_does_not_depend_on_the_batch():
    """float32 and vectorised for serving, it still computes the module's definition (float64 reference), and an
    image scores the same alone as inside any batch."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 6000)
    logits = (rng.normal(0, 1, (6000, 10)) + 6 * np.eye(10)[labels]).astype(np.float32)
    detector = fit_detector(blobs(rng, 4000), logits[:4000], labels[:4000], blobs(rng, 2000), logits[4000:], 1.3)
    junk = np.stack([np.zeros((28, 28)), np.full((28, 28), 200), rng.integers(0, 256, (28, 28))]).astype(np.uint8)
    pixels = np.concatenate([blobs(rng, 500), junk])
    batch_logits = np.concatenate([logits[:500], logits[:3]])
    scores = detector.score(batch_logits, pixels)
    assert scores.dtype == np.float32
    assert scores == pytest.approx(reference_score(detector, batch_logits, pixels), abs=2e-3)
    assert (detector.in_distribution(scores) == detector.in_distribution(
        reference_score(detector, batch_logits, pixels))).mean() >= 0.99
    alone = np.concatenate([detector.score(batch_logits[i:i + 1], pixels[i:i + 1]) for i in range(0, 503, 50)])
    assert alone == pytest.approx(scores[::50], abs=1e-5)


def test_the_batch_views_are_the_views_image_by_image():
    """The serving path's fused statistics (few numpy calls per batch) equal the per-statistic functions computed
    one image at a time (the score's earlier per-request computation), within float32 rounding, blank, constant
    and noise images included."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 3000)
    logits = (rng.normal(0, 1, (3000, 10)) + 6 * np.eye(10)[labels]).astype(np.float32)
    detector = fit_detector(blobs(rng, 2000), logits[:2000], labels[:2000], blobs(rng, 1000), logits[2000:], 1.3)
    junk = np.stack([np.zeros((28, 28)), np.full((28, 28), 200), rng.integers(0, 256, (28, 28)),
                     np.tile(np.arange(28) * 9, (28, 1))]).astype(np.uint8)
    pixels, batch_logits = np.concatenate([blobs(rng, 60), junk]), logits[:64]
    fused, views = detector.batch_views(batch_logits, pixels), detector.views(batch_logits, pixels)
    # The PCA likelihood's residual cancels (a norm less the coefficients' norm): float32 keeps about three digits.
    for name in WEIGHTS:
        assert fused[name].dtype == np.float32
        assert fused[name] == pytest.approx(views[name], rel=1e-3, abs=1e-4), name
    for i in range(len(pixels)):
        alone = detector.views(batch_logits[i:i + 1], pixels[i:i + 1])
        for name in WEIGHTS:
            assert fused[name][i] == pytest.approx(alone[name][0], rel=1e-3, abs=1e-4), (name, i)
