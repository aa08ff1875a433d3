"""PyTorch backend: the folded MLP rebuilt from its layer sizes, weights loaded without pickle code."""

from __future__ import annotations

import zipfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from fashion.manifest import IntegrityError

# torch's own advice in its refusal ("re-run with weights_only=False") is exactly what must not be done here.
TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def build_mlp(layer_sizes: list[int]):
    """``Flatten`` then Linear/ReLU pairs; the inference form (batch norm folded, no dropout)."""
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(pairwise(layer_sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(layer_sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp_from_dense_layers(layers: list[tuple[np.ndarray, np.ndarray]]):
    """An inference MLP holding ``(W[in, out], b)`` weights."""
    import torch

    sizes = [layers[0][0].shape[0], *(w.shape[1] for w, _ in layers)]
    model = build_mlp(sizes)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for linear, (weight, bias) in zip(linears, layers, strict=True):
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
            linear.bias.copy_(torch.from_numpy(bias))
    return model.eval()


class TorchPredictor:
    """An eval-mode MLP on one device, run under ``inference_mode``."""

    def __init__(self, model, device) -> None:
        self.model, self.device = model, device

    def predict(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
            return self.model(x).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        import torch

        facts = {"runtime": "torch", "device": str(self.device), "threads": torch.get_num_threads()}
        if self.device.type == "cuda":
            facts["gpu"] = torch.cuda.get_device_name(self.device)
        return facts


def load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a ``torch.save`` zip checkpoint, unpickled by torch's weights-only unpickler.

    A pickle can name any callable to run while it loads (``__reduce__``); ``weights_only=True``
    allows only tensors and plain containers and refuses anything else before calling it.
    Only the zip format (``torch.save``'s default since 1.6, what our export writes) is accepted, so
    the legacy loaders' code paths stay out of reach: that unpickler has been bypassed before
    (https://github.com/pytorch/pytorch/security/advisories/GHSA-53q9-r3pm-6pq6, fixed in torch 2.6).

    Raises:
        IntegrityError: the file is not a zip checkpoint, or holds something other than tensors.
    """
    from pickle import UnpicklingError  # the exception torch raises; nothing here unpickles with pickle

    import torch

    if not zipfile.is_zipfile(path):
        raise IntegrityError(f"{path}: not a torch.save zip checkpoint (legacy or raw pickle formats are refused)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines()
                          if line.strip() and not line.strip().startswith(TORCH_BOILERPLATE))
        raise IntegrityError(f"{path}: checkpoint holds objects other than tensors (code could run as it loads); "
                             f"refused without loading them. torch: {reason or exc}") from exc


def load(path: Path, device: str = "auto", threads: int = 0, manifest: dict | None = None) -> TorchPredictor:
    """Load the folded state dict with ``weights_only=True`` (no code runs from the file).

    Args:
        path: the ``.pt`` file (already verified against its manifest).
        device: ``auto`` (CUDA when present), ``cuda`` or ``cpu``.
        threads: CPU threads for torch; 0 keeps torch's default.
        manifest: supplies the layer sizes to rebuild the module.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_mlp(manifest["architecture"]["layer_sizes"])
    model.load_state_dict(load_state_dict(path))
    return TorchPredictor(model.eval().to(device), torch.device(device))
