"""Temperature scaling, ECE and the "not clothing" fields of an answer, on synthetic numbers with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from fashion.calibration import expected_calibration_error, fit_temperature, reliability_bins
from fashion.contract import describe_predictions, softmax, temperature_of
from fashion.ood import energy


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
