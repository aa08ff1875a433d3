"""service.v2 lists only the outputs a model can answer: perf_analyzer asks for every listed output;
and the detector scores a request once."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from service.v2 import OUTPUTS, RequestedOutput, output_tensor, served_outputs


def test_a_model_without_a_detector_lists_logits_and_probabilities_only():
    assert served_outputs(SimpleNamespace(detector=None)) == ("logits", "probabilities")
    assert served_outputs(SimpleNamespace(detector=object())) == OUTPUTS


def test_both_not_clothing_outputs_come_from_one_scoring_per_request():
    class CountingDetector:
        threshold = 0.5
        calls = 0

        def score(self, logits, pixels):
            CountingDetector.calls += 1
            return np.array([0.25, 0.75])

        def in_distribution(self, scores):
            return scores >= self.threshold

    backend = SimpleNamespace(detector=CountingDetector(), temperature=1.0, manifest={"version": "v"})
    logits, pixels = np.zeros((2, 10), np.float32), np.zeros((2, 28, 28), np.uint8)
    scores: dict = {}
    tensors = [output_tensor(RequestedOutput(name, binary=False), logits, backend, pixels, scores)
               for name in OUTPUTS]
    assert CountingDetector.calls == 1
    assert [t["data"] for t, _ in tensors[2:]] == [[0.25, 0.75], [False, True]]
