"""service.v2 lists only the outputs a model can answer: perf_analyzer asks for every listed output."""

from __future__ import annotations

from types import SimpleNamespace

from service.v2 import OUTPUTS, served_outputs


def test_a_model_without_a_detector_lists_logits_and_probabilities_only():
    assert served_outputs(SimpleNamespace(detector=None)) == ("logits", "probabilities")
    assert served_outputs(SimpleNamespace(detector=object())) == OUTPUTS
