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


def test_the_shortcut_hands_v2_paths_to_the_v2_app_and_every_other_path_to_bentomls():
    import asyncio

    from service.v2 import V2Shortcut

    reached = []

    def recorder(name):
        async def app(scope, receive, send):
            reached.append((name, scope.get("path")))
        return app

    shortcut = V2Shortcut(recorder("bentoml"), v2=recorder("v2"))
    paths = ["/v2", "/v2/models/onnx-torch/infer", "/v2x", "/classify", "/"]
    for path in paths:
        asyncio.run(shortcut({"type": "http", "path": path}, None, None))
    asyncio.run(shortcut({"type": "lifespan"}, None, None))
    assert reached == [("v2", "/v2"), ("v2", "/v2/models/onnx-torch/infer"), ("bentoml", "/v2x"),
                       ("bentoml", "/classify"), ("bentoml", "/"), ("bentoml", None)]
