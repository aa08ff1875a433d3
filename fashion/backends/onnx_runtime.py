"""ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fashion.contract import INPUT_NAME, OUTPUT_NAME
from fashion.env import has_nvidia_gpu


class OnnxPredictor:
    """An ``InferenceSession`` with the contract's input and output names."""

    def __init__(self, session) -> None:
        self.session = session
        self._output = [OUTPUT_NAME]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(self._output, {INPUT_NAME: images})[0]

    def describe(self) -> dict[str, Any]:
        providers = self.session.get_providers()
        return {"runtime": "onnxruntime", "providers": providers,
                "device": "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"}


def load(path: Path, device: str = "auto", threads: int = 0, manifest: dict | None = None) -> OnnxPredictor:
    """Load an ONNX model.

    Args:
        path: the ``.onnx`` file (already verified against its manifest).
        device: ``auto`` (CUDA when an NVIDIA GPU is present), ``cuda`` or ``cpu``.
        threads: intra-op threads; 0 lets ONNX Runtime use every core.
        manifest: unused; accepted so every backend loads alike.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Ask for CUDA only where a GPU exists: onnxruntime-gpu logs CUDA errors otherwise.
    use_cuda = device == "cuda" or (device == "auto" and has_nvidia_gpu())
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    return OnnxPredictor(session)
