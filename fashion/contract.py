"""Class names, the input contract every exported model follows, and softmax.

The contract (also in the README):

* Model input ``images``: ``float32[N, 28, 28]``, values in ``[0, 1]``
  (raw uint8 pixel / 255), a light object on a dark background, as in
  Fashion-MNIST. ``N`` is dynamic.
* Model output ``logits``: ``float32[N, 10]``, in the order of
  :data:`CLASS_NAMES`. Probabilities come from :func:`softmax`, here and
  nowhere else.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28
INPUT_NAME = "images"
OUTPUT_NAME = "logits"

# Machine-readable form of the contract, written into every manifest.
INPUT_CONTRACT: dict[str, object] = {
    "input_name": INPUT_NAME,
    "shape": [None, IMAGE_SIZE, IMAGE_SIZE],
    "dtype": "float32",
    "value_range": [0.0, 1.0],
    "scaling": "uint8 pixel / 255",
    "polarity": "light object on dark background",
    "output_name": OUTPUT_NAME,
    "output": "logits float32[N, 10]",
}


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """Turn uint8 pixels into the model input.

    Args:
        pixels: ``uint8`` array of shape ``(N, 28, 28)`` (or ``(28, 28)``).

    Returns:
        ``float32`` array of shape ``(N, 28, 28)`` with values in ``[0, 1]``.

    Raises:
        ValueError: when the dtype or shape is not the contract's.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got dtype {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected shape (N, 28, 28), got {pixels.shape}")
    # One float32 pass (5x faster than astype then multiply, same values): every artifact was
    # checked with exactly this scaling; keep it the only place pixels become floats.
    return np.multiply(pixels, np.float32(1.0 / 255.0), dtype=np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax, stable for large logits; the one place served probabilities are made.

    Args:
        logits: array of shape ``(N, C)``.
        temperature: the model's calibration (``manifest["calibration"]["temperature"]``, see
            :func:`temperature_of`); logits are divided by it. 1.0 leaves them as they are.

    Returns:
        ``float32`` probabilities of the same shape; each row sums to 1.
    """
    z = np.asarray(logits, dtype=np.float32)
    if temperature != 1.0:
        z = z / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def temperature_of(manifest: dict) -> float:
    """The calibration temperature an exported model recorded (1.0 for a model exported before calibration)."""
    return float((manifest.get("calibration") or {}).get("temperature", 1.0))


def describe_predictions(probs: np.ndarray, backend: str, model_version: str, top_k: int = 3,
                         ood_scores: np.ndarray | None = None, ood_threshold: float | None = None) -> list[dict]:
    """The JSON answer for each row of probabilities: label, confidence, top-k, backend, model version.

    The one place answers are shaped, for the service and for local batch jobs alike. With ``ood_scores``
    (see fashion.ood) each answer also says how clothing-like its image is: ``ood_score`` (0-1, higher is
    more like the training images) and ``in_distribution`` (score at or above ``ood_threshold``).
    """
    top = np.argsort(-probs, axis=1)[:, :top_k]
    answers = [
        {
            "class_id": int(row_top[0]), "label": CLASS_NAMES[row_top[0]], "confidence": float(row[row_top[0]]),
            "top_k": [{"class_id": int(c), "label": CLASS_NAMES[c], "probability": float(row[c])} for c in row_top],
            "backend": backend, "model_version": model_version,
        }
        for row, row_top in zip(probs, top, strict=True)
    ]
    if ood_scores is not None:
        for answer, score in zip(answers, ood_scores, strict=True):
            answer["ood_score"] = round(float(score), 4)
            answer["in_distribution"] = bool(score >= ood_threshold)
    return answers


# The compact answer for batch clients (``Accept: application/x-npy``, service.answers): one record per image,
# 45 bytes, where the per-image JSON answer takes about 400.
ANSWER_DTYPE = np.dtype([("class_id", np.uint8), ("confidence", np.float32),
                         ("probabilities", np.float32, (NUM_CLASSES,))])


def answer_records(probs: np.ndarray) -> np.ndarray:
    """Rows of :data:`ANSWER_DTYPE` for ``float32[N, 10]`` probabilities: predicted class, its probability, all ten.

    Whole-array operations only: a batch of a thousand images costs microseconds, not a Python loop.
    """
    records = np.empty(len(probs), dtype=ANSWER_DTYPE)
    class_ids = probs.argmax(axis=1)
    records["class_id"] = class_ids
    records["confidence"] = np.take_along_axis(probs, class_ids[:, None], axis=1)[:, 0]
    records["probabilities"] = probs
    return records
