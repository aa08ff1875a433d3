"""MLServer with a custom ONNX Runtime model; adaptive batching is set in its ``model-settings.json``.

There is no ONNX runtime for MLServer on PyPI (no ``mlserver-onnx``), so this is the custom
``MLModel`` its docs describe. ``benchmark.peers`` writes the settings (64 requests or 5 ms) and
runs ``mlserver start <folder>``.
Docs: https://docs.seldon.ai/mlserver/user-guide/adaptive-batching
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from benchmark.peer_servers.common import load_session, probabilities


class OnnxClassifier(MLModel):
    """Decode the v2 input with MLServer's numpy codec, answer probabilities."""

    async def load(self) -> bool:
        self.session = load_session()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        probs = probabilities(self.session, NumpyCodec.decode_input(payload.inputs[0]))
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", probs)])
