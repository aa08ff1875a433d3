"""One loader of a servable model (fashion.servable): the service and the local classifier answer alike."""

from __future__ import annotations

import pytest

from clients.local import LocalClassifier
from fashion.backends import BACKENDS
from fashion.manifest import read_manifest
from fashion.samples import sample_images
from fashion.servable import load_servable
from service.config import ServiceConfig
from service.registry import ModelRegistry


@pytest.fixture(scope="module")
def registry(exported) -> ModelRegistry:
    registry = ModelRegistry(ServiceConfig(device="cpu", threads=1))
    registry.load_all({read_manifest(folder)["name"]: folder for folder in exported.values()})
    assert registry.ready, registry.error
    return registry


def folder_of(exported, backend: str):
    return next(f for f in exported.values() if read_manifest(f)["name"] == BACKENDS[backend].model)


@pytest.mark.parametrize("backend", ["onnx-torch", "onnx-tf", "torch", "savedmodel"])
def test_the_service_and_the_local_classifier_answer_alike(exported, registry, backend):
    pixels, _ = sample_images()
    local = LocalClassifier.open(str(folder_of(exported, backend)), backend, threads=1)
    logits = registry.logits(backend, pixels)
    served = registry.describe(backend, logits, scores=registry.ood_scores(backend, logits, pixels))
    assert local.classify(pixels) == served
    loaded = registry.get(backend)
    assert (local.version, local.temperature) == (loaded.version, loaded.temperature)
    assert local.detector is not None and local.detector.threshold == loaded.detector.threshold


def test_a_servable_carries_its_manifest_calibration_and_detector(exported):
    folder = folder_of(exported, "onnx-torch")
    manifest = read_manifest(folder)
    servable = load_servable(folder, "onnx-torch", "cpu", threads=1)
    assert servable.version == manifest["version"] and servable.artifact == manifest["artifacts"]["onnx"]
    assert servable.temperature == manifest["calibration"]["temperature"] != 1.0
    assert servable.detector is not None
    pixels, labels = sample_images()
    logits = servable.logits(pixels)
    assert (logits.argmax(1) == labels).mean() > 0.5
    assert servable.ood_scores(logits, pixels).shape == (len(pixels),)


def test_a_model_without_the_backend_s_artifact_is_refused(exported):
    with pytest.raises(KeyError, match="no artifact"):
        load_servable(folder_of(exported, "onnx-torch"), "savedmodel")
