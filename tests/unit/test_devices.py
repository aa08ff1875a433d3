"""Per-backend device choice (FASHION_DEVICE, FASHION_DEVICES) and the CPU fallback decision."""

from __future__ import annotations

import pytest

from service.config import ConfigError, ServiceConfig
from service.registry import place_backends


def test_per_backend_devices_override_the_global_one(monkeypatch):
    monkeypatch.setenv("FASHION_DEVICE", "cuda")
    monkeypatch.setenv("FASHION_DEVICES", "torch=cpu, onnx-int8=auto")
    config = ServiceConfig.from_env()
    assert [config.device_for(b) for b in ("torch", "onnx-int8", "onnx-tf", "savedmodel")] == \
        ["cpu", "auto", "cuda", "cpu"]  # savedmodel: CPU by default (TensorFlow's GPU build is not in the Bento)


def test_the_savedmodel_may_be_sent_to_the_gpu(monkeypatch):
    monkeypatch.setenv("FASHION_DEVICES", "savedmodel=auto")
    assert ServiceConfig.from_env().device_for("savedmodel") == "auto"


@pytest.mark.parametrize("text", ["torch", "torch=gpu", "keras=cpu"])
def test_bad_device_settings_are_refused(monkeypatch, text):
    monkeypatch.setenv("FASHION_DEVICES", text)
    with pytest.raises(ConfigError):
        ServiceConfig.from_env()


def test_cuda_without_a_gpu_falls_back_to_the_cpu_with_one_warning():
    placed, warning = place_backends({"torch": "cuda", "onnx-tf": "cuda", "savedmodel": "cpu", "onnx-int8": "auto"},
                                     gpu_present=False)
    assert placed == {"torch": "cpu", "onnx-tf": "cpu", "savedmodel": "cpu", "onnx-int8": "auto"}
    assert "onnx-tf, torch" in warning and "no NVIDIA GPU" in warning


def test_cuda_with_a_gpu_stays_on_the_gpu():
    assert place_backends({"torch": "cuda", "savedmodel": "cpu"}, gpu_present=True) == \
        ({"torch": "cuda", "savedmodel": "cpu"}, None)
