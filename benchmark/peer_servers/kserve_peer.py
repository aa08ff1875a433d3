"""KServe's Python model server, v1 (``:predict``) and v2 (``/infer``) REST, one worker, gRPC off.

``python -m benchmark.peer_servers.kserve_peer``.
Docs: https://kserve.github.io/website/docs/model-serving/predictive-inference/frameworks/custom-predictor
"""

from __future__ import annotations

import uuid

from benchmark.peer_servers.common import MODEL_NAME, load_session, port, probabilities


def build_model():
    """The KServe model (kserve is imported here: the module stays importable without it)."""
    from kserve import InferOutput, InferRequest, InferResponse, Model

    class Classifier(Model):
        def __init__(self) -> None:
            super().__init__(MODEL_NAME)
            self.load()

        def load(self) -> bool:
            self.session = load_session()
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            if isinstance(payload, InferRequest):  # v2
                probs = probabilities(self.session, payload.inputs[0].as_numpy())
                output = InferOutput("probabilities", list(probs.shape), "FP32")
                output.set_data_from_numpy(probs, binary_data=False)
                return InferResponse(payload.id or uuid.uuid4().hex, self.name, [output])
            return {"predictions": probabilities(self.session, payload["instances"]).tolist()}

    return Classifier()


if __name__ == "__main__":
    from kserve import ModelServer

    ModelServer(http_port=port(), enable_grpc=False, workers=1).start([build_model()])
