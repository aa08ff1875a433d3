"""``batch --local`` split over the job's threads answers what LocalClassifier.records answers in one call."""

from __future__ import annotations

import numpy as np
import pytest

from clients.local import LocalClassifier, LocalPlan, plan_local
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


@pytest.mark.parametrize(("backend", "concurrency", "cores", "plan"), [
    (None, None, 2, LocalPlan(calls=2, threads=1)),  # one single-threaded call per core
    ("onnx-tf", None, 8, LocalPlan(calls=8, threads=1)),
    ("onnx-torch", 1, 2, LocalPlan(calls=1, threads=2)),  # asked for one call: it gets every core
    ("onnx-torch", 3, 8, LocalPlan(calls=3, threads=2)),
    ("onnx-torch", 4, 2, LocalPlan(calls=4, threads=1)),
    ("torch", None, 8, LocalPlan(calls=1, threads=0)),  # torch's threads are its own: one call at a time
])
def test_a_local_job_gives_each_core_a_single_threaded_call(backend, concurrency, cores, plan):
    assert plan_local(backend, concurrency, cores) == plan
