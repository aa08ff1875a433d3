"""BentoML with its defaults and an adaptive-batching API, as its docs recommend.

``bentoml serve benchmark.peer_servers.bentoml_peer:Classifier --port N`` (from the repository root).
Docs: https://docs.bentoml.com/en/latest/guides/adaptive-batching.html
"""

from __future__ import annotations

import bentoml
import numpy as np

from benchmark.peer_servers.common import load_session, probabilities


@bentoml.service
class Classifier:
    """One ONNX Runtime session; requests are batched along their first axis."""

    def __init__(self) -> None:
        self.session = load_session()

    @bentoml.api(batchable=True)
    def classify(self, pixels: np.ndarray) -> np.ndarray:
        return probabilities(self.session, pixels)
