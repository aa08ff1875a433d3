"""The framework-independent half of training: batches, augmentation, schedule, the epoch loop.

Both frameworks run this same loop over the same numpy batches, so they see the
same samples in the same order with the same augmentation; a backend only
supplies a :class:`Trainer` (one optimisation step, predict, weights in/out).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fashion.contract import IMAGE_SIZE
from fashion.metrics import cross_entropy
from training.config import AugmentConfig, OptimizerConfig, TrainConfig


class Trainer(Protocol):
    """What a framework backend provides; numpy in, numpy out."""

    framework: str
    device: str

    def train_step(self, images: np.ndarray, labels: np.ndarray, learning_rate: float) -> tuple[float, int]:
        """One optimiser step; returns the batch's mean loss and its number of correct predictions."""

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """Logits for float32 images ``(N, 28, 28)`` in inference mode."""

    def get_weights(self) -> Any:
        """A copy of all weights (and normalisation statistics)."""

    def set_weights(self, weights: Any) -> None:
        """Restore what :meth:`get_weights` returned."""

    def save(self, run_dir: Path) -> str:
        """Write the weights into ``run_dir``; return the file name."""

    def dense_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Inference weights as ``(W[in, out], b[out])`` per layer, batch norm folded in."""


@dataclass(frozen=True)
class TrainData:
    """Float32 model inputs and labels of the train and validation parts of the split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def initial_dense_weights(sizes: list[int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-uniform weights and zero biases, drawn in numpy so both frameworks start identical.

    Args:
        sizes: layer widths including input and output, e.g. ``[784, 256, 10]``.
        seed: the run's seed.
    """
    rng = np.random.default_rng([seed, 1])
    layers = []
    for fan_in, fan_out in pairwise(sizes):
        limit = math.sqrt(6.0 / fan_in)
        weight = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
        layers.append((weight, np.zeros(fan_out, dtype=np.float32)))
    return layers


def fold_batch_norm(
    weight: np.ndarray, bias: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    mean: np.ndarray, var: np.ndarray, eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference-mode batch norm that follows ``x @ weight + bias`` into the layer.

    ``bn(x W + b) = (x W + b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``,
    which is ``x (W s) + ((b - mean) s + beta)``: one matrix product, no batch norm.
    """
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    folded_w = weight.astype(np.float64) * scale[None, :]
    folded_b = (bias.astype(np.float64) - mean) * scale + beta
    return folded_w.astype(np.float32), folded_b.astype(np.float32)


def augment_batch(images: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Shift each image by up to ``max_shift`` pixels (zero fill), flip half horizontally, then turn (see
    :func:`turn_batch`).

    One vectorised gather per batch; no per-image Python loop.
    """
    if not config.max_shift and not config.flip:
        return turn_batch(images, config, rng)
    n, pad = len(images), config.max_shift
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad))) if pad else images
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2)) if pad else np.zeros((n, 2), dtype=np.int64)
    grid = np.arange(IMAGE_SIZE)
    rows = offsets[:, 0, None] + grid
    cols = offsets[:, 1, None] + grid
    if config.flip:
        flip = rng.random(n) < 0.5
        cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return turn_batch(padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]], config, rng)


def turn_batch(images: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """A share ``affine_share`` of ``images`` rotated and sheared by angles drawn within the config's bounds
    (:func:`turn_images`); the batch itself, without drawing from ``rng``, when the config asks for no turn."""
    if not config.max_rotate and not config.max_shear:
        return images
    n = len(images)
    rotate = rng.uniform(-config.max_rotate, config.max_rotate, n)
    shear = rng.uniform(-config.max_shear, config.max_shear, n)
    chosen = rng.random(n) < config.affine_share
    return turn_images(images, np.where(chosen, rotate, 0.0), np.where(chosen, shear, 0.0))


def turn_images(images: np.ndarray, rotate: np.ndarray, shear: np.ndarray) -> np.ndarray:
    """``images[i]`` rotated clockwise by ``rotate[i]`` degrees after a horizontal shear of ``shear[i]`` degrees,
    about the image centre (bilinear, zero fill), in one gather for the batch.

    Output pixel ``p`` takes the input at ``A^-1 (p - c) + c``, ``A`` the rotation times the shear in (x, y)
    order with y down, as MNIST-C's rotate and shear families (and a tilted photo) move the object.
    """
    n = len(images)
    angle, slope = np.radians(rotate), np.tan(np.radians(shear))
    cos, sin = np.cos(angle), np.sin(angle)
    # A = [[cos, -sin], [sin, cos]] @ [[1, slope], [0, 1]]; its inverse is [[1, -slope], [0, 1]] @ R^T.
    inverse = np.stack([np.stack([cos + slope * sin, sin - slope * cos], -1), np.stack([-sin, cos], -1)], -2)
    centre = (IMAGE_SIZE - 1) / 2
    out_x, out_y = np.meshgrid(np.arange(IMAGE_SIZE) - centre, np.arange(IMAGE_SIZE) - centre)
    source = inverse @ np.stack([out_x.ravel(), out_y.ravel()]) + centre  # [n, 2, 784], (x, y)
    x, y = source[:, 0], source[:, 1]
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    # A zero border one pixel wide: every source outside the image reads it, so no mask is needed.
    side = IMAGE_SIZE + 2
    flat = np.pad(images.astype(np.float32), ((0, 0), (1, 1), (1, 1))).reshape(n, -1)
    x0, y0 = np.clip(x0 + 1, 0, side - 1), np.clip(y0 + 1, 0, side - 1)
    x1, y1 = np.minimum(x0 + 1, side - 1), np.minimum(y0 + 1, side - 1)
    index = np.arange(n)[:, None]
    top = flat[index, y0 * side + x0] * (1 - fx) + flat[index, y0 * side + x1] * fx
    bottom = flat[index, y1 * side + x0] * (1 - fx) + flat[index, y1 * side + x1] * fx
    return (top * (1 - fy) + bottom * fy).reshape(images.shape).astype(images.dtype)


def augment_for_epoch(config: TrainConfig, epoch: int) -> AugmentConfig:
    """The augmentation of 1-based ``epoch``: the config's, without the turn in its last ``plain_epochs`` epochs."""
    augment = config.augment
    if epoch > config.epochs - augment.plain_epochs:
        return replace(augment, max_rotate=0.0, max_shear=0.0)
    return augment


def iterate_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, rng: np.random.Generator,
    augment: AugmentConfig,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled (and optionally augmented) batches covering every training sample once."""
    order = rng.permutation(len(images))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        yield augment_batch(images[index], augment, rng), labels[index]


def learning_rate_at(step: int, total_steps: int, config: OptimizerConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    ``onecycle``: linear warm-up over the first 20% of steps from lr/25 to lr,
    then cosine decay to lr/2500 (the shape of PyTorch's OneCycleLR defaults,
    computed here so both frameworks follow the same curve).
    """
    if config.schedule == "constant":
        return config.learning_rate
    peak, warmup = config.learning_rate, max(1, int(0.2 * total_steps))
    start, end = peak / 25.0, peak / 2500.0
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean loss and accuracy in inference mode."""
    logits = trainer.predict_logits(images)
    return cross_entropy(logits, labels), float((logits.argmax(axis=1) == labels).mean())


def fit(trainer: Trainer, data: TrainData, config: TrainConfig, progress: bool = True,
        on_epoch: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train for ``config.epochs`` epochs with early stopping on validation loss.

    When early stopping is configured, the weights of the epoch with the lowest
    validation loss are restored at the end. ``on_epoch`` sees each epoch's row
    (a tuner reports to its pruner there, and may stop the run by raising).

    Returns:
        Per-epoch history: train/val loss and accuracy, learning rate, seconds.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng([config.seed, 2])
    steps_per_epoch = math.ceil(len(data.train_images) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    history: list[dict[str, float]] = []
    best_loss, best_weights, stale, step = math.inf, None, 0, 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        loss_sum = correct = seen = 0
        bar = tqdm(
            iterate_batches(data.train_images, data.train_labels, config.batch_size, rng,
                            augment_for_epoch(config, epoch)),
            total=steps_per_epoch, desc=f"{trainer.framework} epoch {epoch}/{config.epochs}",
            disable=not progress, leave=False, unit="batch",
        )
        for images, labels in bar:
            lr = learning_rate_at(step, total_steps, config.optimizer)
            loss, hits = trainer.train_step(images, labels, lr)
            step += 1
            loss_sum += loss * len(labels)
            correct += hits
            seen += len(labels)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        val_loss, val_acc = evaluate(trainer, data.val_images, data.val_labels)
        row = {
            "epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "val_loss": val_loss, "val_accuracy": val_acc, "learning_rate": lr,
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if progress:
            tqdm.write(
                f"{trainer.framework} epoch {epoch:>3}: loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
                f" | val loss {val_loss:.4f} acc {val_acc:.4f} | {row['seconds']:.1f}s"
            )
        if config.early_stopping_patience is None:
            continue
        if val_loss < best_loss:
            best_loss, best_weights, stale = val_loss, trainer.get_weights(), 0
        else:
            stale += 1
            if stale >= config.early_stopping_patience:
                break
    if best_weights is not None:
        trainer.set_weights(best_weights)
    return history
