"""TensorFlow/Keras half of training: the MLP as a Keras model and a :class:`~training.loop.Trainer`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fashion.backends import savedmodel_runtime
from fashion.contract import IMAGE_SIZE, NUM_CLASSES
from training.config import ModelConfig, OptimizerConfig, TrainConfig
from training.loop import fold_batch_norm, initial_dense_weights

FRAMEWORK = "tf"
WEIGHTS_FILE = "model.keras"
# Same batch-norm settings as PyTorch's defaults (Keras' own are momentum 0.99, eps 1e-3).
BN_EPS = 1e-5
BN_MOMENTUM = 0.9
# PyTorch's optimiser epsilon, so both frameworks take the same update rule.
OPT_EPS = 1e-8


def configure_tensorflow(device: str = "auto") -> str:
    """Use every core, and the GPU (with memory growth) when present; call before TensorFlow builds anything.

    Returns:
        The device TensorFlow will use (``GPU:0`` or ``CPU:0``).
    """
    on_gpu = savedmodel_runtime.configure_tensorflow(device, threads=os.cpu_count() or 1)
    if device == "cuda" and not on_gpu:
        raise RuntimeError("device 'cuda' requested but TensorFlow sees no GPU")
    return "GPU:0" if on_gpu else "CPU:0"


def build_model(config: ModelConfig):
    """784 -> hidden (Dense[, BatchNorm], ReLU[, Dropout]) ... -> 10 logits."""
    import keras

    layers = [keras.Input((IMAGE_SIZE, IMAGE_SIZE), name="images"), keras.layers.Flatten()]
    for hidden in config.hidden_sizes:
        layers.append(keras.layers.Dense(hidden))
        if config.batch_norm:
            layers.append(keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS))
        layers.append(keras.layers.ReLU())
        if config.dropout:
            layers.append(keras.layers.Dropout(config.dropout))
    layers.append(keras.layers.Dense(NUM_CLASSES, name="logits"))
    return keras.Sequential(layers, name="fashion_mlp")


def _make_optimizer(config: OptimizerConfig):
    import keras

    lr = config.learning_rate
    if config.name == "sgd":
        return keras.optimizers.SGD(lr, momentum=config.momentum, weight_decay=config.weight_decay or None)
    if config.name == "adam":
        return keras.optimizers.Adam(lr, beta_1=config.beta1, beta_2=config.beta2, epsilon=OPT_EPS,
                                     weight_decay=config.weight_decay or None)
    if config.name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay, beta_1=config.beta1,
                                      beta_2=config.beta2, epsilon=OPT_EPS)
    return keras.optimizers.RMSprop(lr, rho=config.rho, momentum=config.momentum, epsilon=OPT_EPS,
                                    weight_decay=config.weight_decay or None)


class TfTrainer:
    """A :class:`~training.loop.Trainer` around a Keras ``Sequential`` MLP, stepped by a ``tf.function``."""

    framework = FRAMEWORK

    def __init__(self, config: TrainConfig, device: str = "auto", init: bool = True, model=None) -> None:
        self.device = configure_tensorflow(device)
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(config.seed)
        self.config = config
        self.model = model if model is not None else build_model(config.model)
        if init and config.model.init == "shared":
            dense = [layer for layer in self.model.layers if isinstance(layer, keras.layers.Dense)]
            sizes = [IMAGE_SIZE * IMAGE_SIZE, *config.model.hidden_sizes, NUM_CLASSES]
            for layer, (weight, bias) in zip(dense, initial_dense_weights(sizes, config.seed), strict=True):
                layer.set_weights([weight, bias])
        self.optimizer = _make_optimizer(config.optimizer)
        self.optimizer.build(self.model.trainable_variables)
        smoothing = float(config.label_smoothing)
        model, optimizer = self.model, self.optimizer
        image_spec = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.float32)

        @tf.function(input_signature=[image_spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32)])
        def step(images, labels, learning_rate):
            optimizer.learning_rate.assign(learning_rate)
            targets = tf.one_hot(labels, NUM_CLASSES)
            if smoothing:
                targets = targets * (1.0 - smoothing) + smoothing / NUM_CLASSES
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels), tf.int32))
            return loss, hits

        @tf.function(input_signature=[image_spec])
        def infer(images):
            return model(images, training=False)

        self._step, self._infer = step, infer

    def train_step(self, images: np.ndarray, labels: np.ndarray, learning_rate: float) -> tuple[float, int]:
        loss, hits = self._step(images, labels.astype(np.int32), np.float32(learning_rate))
        return float(loss), int(hits)

    def predict_logits(self, images: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        out = [self._infer(np.ascontiguousarray(images[i:i + batch_size])).numpy()
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)

    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.model.get_weights()]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.model.set_weights(weights)

    def save(self, run_dir: Path) -> str:
        self.model.save(run_dir / WEIGHTS_FILE)
        return WEIGHTS_FILE

    @classmethod
    def load(cls, config: TrainConfig, run_dir: Path, device: str = "auto") -> TfTrainer:
        """Load the ``.keras`` file in safe mode (no arbitrary code) and wrap it."""
        configure_tensorflow(device)
        import keras

        model = keras.models.load_model(run_dir / WEIGHTS_FILE, compile=False, safe_mode=True)
        return cls(config, device, init=False, model=model)

    def dense_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        import keras

        layers: list[tuple[np.ndarray, np.ndarray]] = []
        modules = self.model.layers
        for i, layer in enumerate(modules):
            if not isinstance(layer, keras.layers.Dense):
                continue
            weight, bias = (np.asarray(v) for v in layer.get_weights())
            following = modules[i + 1] if i + 1 < len(modules) else None
            if isinstance(following, keras.layers.BatchNormalization):
                gamma, beta, mean, var = (np.asarray(v) for v in following.get_weights())
                weight, bias = fold_batch_norm(weight, bias, gamma, beta, mean, var, following.epsilon)
            layers.append((np.ascontiguousarray(weight, dtype=np.float32), bias.astype(np.float32)))
        return layers
