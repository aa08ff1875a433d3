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


def test_a_json_answer_is_the_text_starlette_would_render():
    """orjson writes what Starlette's JSONResponse wrote before (service.v2.json_bytes): the same shortest floats,
    the same UTF-8, the same compact separators."""
    import json

    from service.v2 import json_bytes

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 10)).astype(np.float32) * 1e3
    answer = {"model_name": "onnx-torch", "model_version": "0123abcd", "id": "grüße ✓ \"quoted\"\n",
              "outputs": [{"name": "logits", "datatype": "FP32", "shape": [3, 10], "data": logits.ravel().tolist()},
                          {"name": "in_distribution", "datatype": "BOOL", "shape": [3, 1], "data": [True, False, True]},
                          {"name": "tiny", "data": [1e-45, 5e-324, 0.1, -0.0, 1.0, 123456789012345]}]}
    starlette = json.dumps(answer, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
    assert json_bytes(answer) == starlette
