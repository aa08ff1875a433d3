"""service.v2 lists only the outputs a model can answer: perf_analyzer asks for every listed output;
and the "not clothing" outputs come from the scores the batch computed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from service.batcher import Outputs
from service.v2 import OUTPUTS, RequestedOutput, V2Error, output_tensor, served_outputs


def test_a_model_without_a_detector_lists_logits_and_probabilities_only():
    assert served_outputs(SimpleNamespace(detector=None)) == ("logits", "probabilities")
    assert served_outputs(SimpleNamespace(detector=object())) == OUTPUTS


def test_both_not_clothing_outputs_come_from_the_scores_the_batch_computed():
    class Detector:
        threshold = 0.5

        def score(self, logits, pixels):
            raise AssertionError("the v2 answer scored on its own; the batch computes the scores")

        def in_distribution(self, scores):
            return scores >= self.threshold

    backend = SimpleNamespace(detector=Detector(), temperature=1.0, manifest={"version": "v"})
    result = Outputs(np.zeros((2, 10), np.float32), np.array([0.25, 0.75], np.float32))
    tensors = [output_tensor(RequestedOutput(name, binary=False), result, backend) for name in OUTPUTS]
    assert [t["data"] for t, _ in tensors[2:]] == [[0.25, 0.75], [False, True]]


def test_a_not_clothing_output_of_an_unscored_batch_is_a_clear_400():
    backend = SimpleNamespace(detector=None, temperature=1.0, manifest={"version": "v"})
    with pytest.raises(V2Error, match="without a detector") as refused:
        output_tensor(RequestedOutput("ood_score", binary=False), Outputs(np.zeros((1, 10), np.float32)), backend)
    assert refused.value.status == 400
