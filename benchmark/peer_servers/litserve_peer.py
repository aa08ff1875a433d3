"""LitServe with dynamic batching (64 requests or 5 ms), as its batching docs recommend.

``python -m benchmark.peer_servers.litserve_peer`` in a venv with litserve; ``POST /predict`` with
``{"pixels": [[...28]...]}``. Docs: https://lightning.ai/docs/litserve/features/batching
"""

from __future__ import annotations

import litserve as ls
import numpy as np

from benchmark.peer_servers.common import BATCH_TIMEOUT_S, MAX_BATCH_SIZE, load_session, port, probabilities


# At module level: LitServe pickles the API into its inference worker process.
class ClassifierAPI(ls.LitAPI):
    """Decode one image per request, stack a batch, answer its probabilities."""

    def setup(self, device):
        self.session = load_session()

    def decode_request(self, request):
        return np.asarray(request["pixels"], dtype=np.uint8)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return probabilities(self.session, x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"probabilities": output.tolist()}


if __name__ == "__main__":
    api = ClassifierAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
    ls.LitServer(api, accelerator="cpu").run(port=port(), generate_client_file=False)
