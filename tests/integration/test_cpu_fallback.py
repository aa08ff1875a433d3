"""FASHION_DEVICE=cuda on a machine without a GPU: one warning, every backend on the CPU, /model_info truthful."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fashion.backends import MODEL_NAMES
from fashion.env import has_nvidia_gpu
from service.config import ServiceConfig
from service.registry import ModelRegistry

pytestmark = pytest.mark.skipif(has_nvidia_gpu(), reason="this machine has a GPU: there is nothing to fall back from")


def test_cuda_asked_without_a_gpu_loads_every_backend_on_the_cpu(exported, caplog):
    registry = ModelRegistry(ServiceConfig(device="cuda", devices=(), threads=1))
    model_dirs = {MODEL_NAMES[fw]: Path(path) for fw, path in exported.items()}
    with caplog.at_level(logging.WARNING, logger="bentoml.fashion_serve"):
        registry.load_all(model_dirs)
    assert registry.ready, registry.error
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no NVIDIA GPU" in warnings[0].getMessage()
    info = registry.info()
    assert info["gpu_present"] is False
    for name, backend in info["backends"].items():
        assert backend["loaded"] and backend["device_requested"] == "cuda", name
        assert backend["device"] in ("cpu", "CPU:0"), (name, backend["device"])
        assert backend.get("providers", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"], name
