"""TensorFlow SavedModel backend, through its ``serving_default`` signature."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fashion.contract import INPUT_NAME, OUTPUT_NAME

SIGNATURE = "serving_default"


def configure_tensorflow(device: str = "auto", threads: int = 0) -> bool:
    """Threads, GPU visibility and memory growth; returns whether a GPU will be used.

    Must run before TensorFlow initialises; later calls leave settings as they are.
    """
    from fashion.env import has_nvidia_gpu

    use_gpu = device == "cuda" or (device == "auto" and has_nvidia_gpu())
    # TensorFlow's CUDA build logs a cuInit error on machines without a GPU (level 2);
    # there is no GPU to report on, so keep such a machine's logs clean.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if use_gpu else "3")
    import tensorflow as tf

    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        gpus = tf.config.list_physical_devices("GPU") if use_gpu else []
        if gpus:
            # Without memory growth TensorFlow reserves the whole GPU at start.
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
        else:
            tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        return bool(tf.config.get_visible_devices("GPU"))
    return bool(gpus)


class SavedModelPredictor:
    """A loaded SavedModel called through its serving signature."""

    def __init__(self, module, on_gpu: bool) -> None:
        self.module = module
        self.signature = module.signatures[SIGNATURE]
        self.on_gpu = on_gpu

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.signature(**{INPUT_NAME: images})[OUTPUT_NAME].numpy()

    def describe(self) -> dict[str, Any]:
        import tensorflow as tf

        return {"runtime": "tensorflow", "device": "GPU:0" if self.on_gpu else "CPU:0",
                "visible_devices": [d.name for d in tf.config.get_visible_devices()]}


def load(path: Path, device: str = "auto", threads: int = 0, manifest: dict | None = None) -> SavedModelPredictor:
    """Load a SavedModel folder (already verified against its manifest)."""
    on_gpu = configure_tensorflow(device, threads)
    import tensorflow as tf

    return SavedModelPredictor(tf.saved_model.load(str(path)), on_gpu)
