"""PyTorch half of training: the MLP as ``torch.nn`` and a :class:`~training.loop.Trainer`."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion.contract import IMAGE_SIZE, NUM_CLASSES
from training.config import ModelConfig, OptimizerConfig, TrainConfig
from training.loop import fold_batch_norm, initial_dense_weights

FRAMEWORK = "torch"
WEIGHTS_FILE = "model.pt"
BN_EPS = 1e-5


def build_model(config: ModelConfig) -> nn.Sequential:
    """784 -> hidden (Linear[, BatchNorm], ReLU[, Dropout]) ... -> 10 logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = IMAGE_SIZE * IMAGE_SIZE
    for hidden in config.hidden_sizes:
        layers.append(nn.Linear(width, hidden))
        if config.batch_norm:
            layers.append(nn.BatchNorm1d(hidden, eps=BN_EPS, momentum=0.1))
        layers.append(nn.ReLU())
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        width = hidden
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; on CPU, use every core."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.device(device)


def _make_optimizer(params, config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                                weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                                 weight_decay=config.weight_decay)
    # Keras' RMSprop `rho` is PyTorch's `alpha`.
    return torch.optim.RMSprop(params, lr=config.learning_rate, alpha=config.rho, momentum=config.momentum,
                               weight_decay=config.weight_decay)


def _linears(model: nn.Sequential) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


class TorchTrainer:
    """A :class:`~training.loop.Trainer` around an ``nn.Sequential`` MLP."""

    framework = FRAMEWORK

    def __init__(self, config: TrainConfig, device: str = "auto", init: bool = True) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.model = build_model(config.model)
        if init and config.model.init == "shared":
            sizes = [IMAGE_SIZE * IMAGE_SIZE, *config.model.hidden_sizes, NUM_CLASSES]
            with torch.no_grad():
                for linear, (weight, bias) in zip(_linears(self.model), initial_dense_weights(sizes, config.seed),
                                                  strict=True):
                    linear.weight.copy_(torch.from_numpy(weight.T.copy()))
                    linear.bias.copy_(torch.from_numpy(bias))
        self.model.to(self.torch_device)
        self.optimizer = _make_optimizer(self.model.parameters(), config.optimizer)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def train_step(self, images: np.ndarray, labels: np.ndarray, learning_rate: float) -> tuple[float, int]:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        x = torch.from_numpy(images).to(self.torch_device, non_blocking=True)
        y = torch.from_numpy(labels.astype(np.int64)).to(self.torch_device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        self.optimizer.step()
        return float(loss.item()), int((logits.argmax(dim=1) == y).sum().item())

    @torch.inference_mode()
    def predict_logits(self, images: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        self.model.eval()
        out = [
            self.model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(self.torch_device))
            .float().cpu().numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)

    def get_weights(self) -> dict[str, torch.Tensor]:
        return copy.deepcopy(self.model.state_dict())

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)

    def save(self, run_dir: Path) -> str:
        # A plain state_dict of tensors: it loads with weights_only=True (no pickle code paths).
        torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, run_dir / WEIGHTS_FILE)
        return WEIGHTS_FILE

    @classmethod
    def load(cls, config: TrainConfig, run_dir: Path, device: str = "auto") -> TorchTrainer:
        """Rebuild the model from its config and load saved weights (``weights_only=True``)."""
        trainer = cls(config, device, init=False)
        state = torch.load(run_dir / WEIGHTS_FILE, map_location=trainer.torch_device, weights_only=True)
        trainer.model.load_state_dict(state)
        return trainer

    def dense_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        layers: list[tuple[np.ndarray, np.ndarray]] = []
        modules = list(self.model)
        for i, module in enumerate(modules):
            if not isinstance(module, nn.Linear):
                continue
            weight = module.weight.detach().cpu().numpy().T
            bias = module.bias.detach().cpu().numpy()
            following = modules[i + 1] if i + 1 < len(modules) else None
            if isinstance(following, nn.BatchNorm1d):
                weight, bias = fold_batch_norm(
                    weight, bias, following.weight.detach().cpu().numpy(), following.bias.detach().cpu().numpy(),
                    following.running_mean.cpu().numpy(), following.running_var.cpu().numpy(), following.eps,
                )
            layers.append((np.ascontiguousarray(weight, dtype=np.float32), bias.astype(np.float32)))
        return layers
