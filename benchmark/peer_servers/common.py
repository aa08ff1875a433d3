"""What every peer server shares: the model, the preprocessing and the answer, so only the framework differs.

Configuration comes in through the environment (``benchmark.peers`` sets it): each framework has
its own way to start a server, and the environment is the one way they all pass on to workers.
"""

from __future__ import annotations

import os

import numpy as np

from fashion.contract import INPUT_NAME, preprocess, softmax

MODEL_ENV = "FASHION_ONNX_MODEL"
PORT_ENV = "PEER_PORT"
MODEL_NAME = "fashion"
# Dynamic batching as the issue and each project's docs suggest for a small model on CPU.
MAX_BATCH_SIZE = 64
BATCH_TIMEOUT_S = 0.005


def load_session():
    """The ONNX model with ONNX Runtime's CPU defaults (every core for intra-op threads)."""
    import onnxruntime as ort

    return ort.InferenceSession(os.environ[MODEL_ENV], providers=["CPUExecutionProvider"])


def probabilities(session, pixels) -> np.ndarray:
    """``float32[N, 10]`` probabilities for ``uint8`` pixels ``[N, 28, 28]`` (or one ``[28, 28]`` image)."""
    batch = preprocess(np.asarray(pixels, dtype=np.uint8))
    return softmax(session.run(None, {INPUT_NAME: batch})[0])


def port() -> int:
    """The HTTP port ``benchmark.peers`` chose for this server."""
    return int(os.environ[PORT_ENV])
