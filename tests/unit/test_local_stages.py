"""``batch --local`` split over the job's threads answers what LocalClassifier.records answers in one call."""

from __future__ import annotations

import numpy as np

from clients.local import LocalClassifier
from fashion.contract import preprocess


class ScaledSum:
    """A stand-in model: ten logits from the scaled input, recording what it was given."""

    def __init__(self) -> None:
        self.inputs: list[np.ndarray] = []

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.inputs.append(images)
        return images.reshape(len(images), -1)[:, :10] * 10.0


def test_logits_scale_the_pixels_then_call_the_model():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    model = LocalClassifier(ScaledSum(), "onnx-torch", "v1", temperature=1.5)
    logits = model.logits(pixels)
    assert np.array_equal(model.predictor.inputs[0], preprocess(pixels))
    assert model.records(pixels).tobytes() == model.records_of(logits).tobytes()
