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


class ContractError(ValueError):
    """Input that breaks the contract: the one error type of every pixel, label and array-file check.

    ``reason`` names the rule broken (one of :data:`REASONS`) so that each layer maps it to its own answer:
    the native routes to 400/413/422 (service.inputs), KServe v2 to its error JSON (service.v2), a dataset task
    to its failure (service.datasets), the batch CLI to an error line (clients.sources).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


# Why an input was refused. MALFORMED: not an array at all (ragged lists, a file numpy cannot read); SHAPE: not
# uint8 N x 28 x 28 (or the wrong dtype); EMPTY: no images; TOO_MANY: over the caller's image limit; VALUES:
# pixels that are not whole numbers 0-255; LABELS: labels of the wrong count, type or range; NOT_ARRAYS: a file
# that is none of the array formats read (fashion.arrays).
MALFORMED, SHAPE, EMPTY, TOO_MANY, VALUES, LABELS, NOT_ARRAYS = (
    "malformed", "shape", "empty", "too_many", "values", "labels", "not_arrays")
REASONS = (MALFORMED, SHAPE, EMPTY, TOO_MANY, VALUES, LABELS, NOT_ARRAYS)


def check_count(count: int, max_images: int | None, where: str = "", who: str = "a request") -> int:
    """``count`` images, refused when there are none (:data:`EMPTY`) or more than ``max_images`` (:data:`TOO_MANY`;
    ``who`` names whose limit it is: ``a request``, ``a task``)."""
    if count < 1:
        raise ContractError(f"{where}holds no images", EMPTY)
    if max_images is not None and count > max_images:
        raise ContractError(f"{where}{count:,} images; {who} takes at most {max_images:,}", TOO_MANY)
    return count


def check_image_header(shape: tuple[int, ...], dtype: np.dtype, max_images: int | None = None, where: str = "",
                       who: str = "a request", allow_empty: bool = False) -> int:
    """The image count of an array that is (or whose file header says it is) ``uint8[N, 28, 28]``.

    Args:
        shape: the array's shape; dtype: its dtype. Checked before any data is read, for files.
        max_images: the caller's limit (``None``: none).
        where: prefix naming the input in messages (``"images.npz[x]: "``).
        who: whose limit ``max_images`` is, for the message.
        allow_empty: ``N == 0`` passes (model input; requests always hold an image).

    Raises:
        ContractError: :data:`SHAPE`, :data:`EMPTY` or :data:`TOO_MANY`.
    """
    if len(shape) != 3 or tuple(shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or dtype != np.uint8:
        raise ContractError(f"{where}expected uint8 N x 28 x 28 images, got {dtype} {tuple(shape)}", SHAPE)
    return shape[0] if allow_empty and shape[0] == 0 else check_count(shape[0], max_images, where, who)


def as_array(data: object, what: str = "pixels") -> np.ndarray:
    """``data`` (nested lists, an array) as a numpy array, or :data:`MALFORMED` when it is not rectangular."""
    try:
        return np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ContractError(f"{what} are not a rectangular array: {exc}", MALFORMED) from None


def check_pixel_values(array: np.ndarray, integers_only: bool = False, what: str = "pixels") -> np.ndarray:
    """``array`` as ``uint8`` when every value is a whole number from 0 to 255, else :data:`VALUES`.

    ``integers_only``: floats are refused even when whole (KServe v2's ``UINT8`` in JSON, as Triton reads it).
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f" and not integers_only and not np.isfinite(array).all():
        raise ContractError(f"{what} contain NaN or infinite values", VALUES)
    kinds = "iu" if integers_only else "iuf"
    if array.dtype.kind not in kinds or (array.size and (array.min() < 0 or array.max() > 255)) or (
            array.dtype.kind == "f" and not (array == np.round(array)).all()):
        raise ContractError(f"{what} must be whole numbers from 0 to 255 (uint8); got dtype {array.dtype}", VALUES)
    return array.astype(np.uint8)


def check_pixels(data: object, max_images: int | None, who: str = "a request") -> np.ndarray:
    """``uint8[N, 28, 28]`` from a client's pixels (nested lists or an array of whole numbers; one 28 x 28 image
    counts as ``N = 1``).

    Raises:
        ContractError: :data:`MALFORMED`, :data:`SHAPE`, :data:`EMPTY`, :data:`TOO_MANY` or :data:`VALUES`.
    """
    array = as_array(data)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ContractError(f"pixels must have shape (N, 28, 28); got {array.shape}", SHAPE)
    check_count(len(array), max_images, "pixels: ", who)
    return check_pixel_values(array)


def check_label_header(shape: tuple[int, ...], dtype: np.dtype, count: int, where: str = "") -> None:
    """Labels whose (file header's) shape and dtype are ``count`` whole numbers, else :data:`LABELS`."""
    if tuple(shape) != (count,) or dtype.kind not in "iu":
        raise ContractError(f"{where}expected {count:,} integer class ids, got {dtype} {tuple(shape)}", LABELS)


def check_labels(labels: np.ndarray, count: int, where: str = "") -> np.ndarray:
    """``int64`` class ids: ``count`` whole numbers, each in ``0..9``, else :data:`LABELS`."""
    labels = np.asarray(labels)
    check_label_header(labels.shape, labels.dtype, count, where)
    if count and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ContractError(f"{where}class ids must be 0 to {NUM_CLASSES - 1}; found {labels.min()} to "
                            f"{labels.max()}", LABELS)
    return labels.astype(np.int64)


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """Turn uint8 pixels into the model input.

    Args:
        pixels: ``uint8`` array of shape ``(N, 28, 28)`` (or ``(28, 28)``).

    Returns:
        ``float32`` array of shape ``(N, 28, 28)`` with values in ``[0, 1]``.

    Raises:
        ContractError: when the dtype or shape is not the contract's.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[None]
    check_image_header(pixels.shape, pixels.dtype, allow_empty=True)
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
# 45 bytes, where a per-image JSON answer takes several hundred.
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
