"""Parity between backends (fashion.metrics.parity_report, /parity): the exported models agree, perturbations caught.

The same comparison judges the /parity endpoint (tests/integration/test_parity_http.py) and the readiness
warm-up, checked here in-process on the quickly trained models and on real test images.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from fashion.backends import BACKENDS
from fashion.manifest import checksum_tree, read_manifest, write_manifest
from fashion.metrics import parity_report
from fashion.samples import sample_images
from service.batcher import MicroBatcher
from service.config import ServiceConfig
from service.parity import check_loaded_backends
from service.registry import ModelRegistry


def load_registry(model_dirs: dict[str, Path], backends: tuple[str, ...] | None = None) -> ModelRegistry:
    """A registry as the service builds it, on the CPU; ``backends`` None: all of them."""
    config = ServiceConfig(device="cpu", threads=1) if backends is None else ServiceConfig(
        backends=backends, default_backend=backends[0], device="cpu", threads=1, explicit_backends=True)
    registry = ModelRegistry(config)
    registry.load_all(model_dirs)
    return registry


def model_dirs(exported: dict[str, Path]) -> dict[str, Path]:
    return {read_manifest(folder)["name"]: folder for folder in exported.values()}


@pytest.fixture(scope="module")
def registry(exported) -> ModelRegistry:
    registry = load_registry(model_dirs(exported))
    assert registry.ready, registry.error
    return registry


def run_parity(registry: ModelRegistry, pixels: np.ndarray | None) -> dict:
    """What /parity answers: every loaded backend through a real batcher, compared."""

    async def go() -> dict:
        batcher = MicroBatcher(registry.run_batch)
        try:
            return await check_loaded_backends(batcher, registry, pixels)
        finally:
            batcher.close()

    return asyncio.run(go())


def test_backends_of_each_exported_model_agree_on_real_test_images(registry, dataset):
    pixels = dataset.test_images[:2000]
    report = run_parity(registry, pixels)
    assert report["source"] == "request" and report["images"] == len(pixels) and report["consistent"] is True
    names = list(registry.backends)
    assert len(report["pairs"]) == len(names) * (len(names) - 1) // 2
    by_relation: dict[str, list[dict]] = {}
    for pair in report["pairs"]:
        by_relation.setdefault(pair["relation"], []).append(pair)
    # onnx-torch + torch, onnx-tf + savedmodel: the export verified each against its source.
    assert {tuple(p["backends"]) for p in by_relation["same-model"]} == {("onnx-torch", "torch"),
                                                                         ("onnx-tf", "savedmodel")}
    for pair in by_relation["same-model"]:
        assert pair["consistent"] is True and pair["top1_agreement"] == 1.0 and not pair["disagreements"]
        assert pair["max_abs_prob_diff"] <= report["tolerance"]
    # Different models are reported, never judged: their disagreements are listed by image index.
    for pair in by_relation["cross-model"] + by_relation.get("quantized", []):
        assert "consistent" not in pair
        labels = {name: registry.logits(name, pixels).argmax(1) for name in pair["backends"]}
        a, b = pair["backends"]
        assert pair["disagreements"] == np.flatnonzero(labels[a] != labels[b]).tolist()
    assert {name for model in report["models"].values() for name in model["backends"]} == set(names)


def temperature(logits: np.ndarray) -> np.ndarray:
    """Sharper probabilities, the same label for every image: what slightly drifted weights can do."""
    return logits * np.float32(1.1)


def noise(logits: np.ndarray) -> np.ndarray:
    return logits + np.random.default_rng(0).normal(0, 0.5, logits.shape).astype(np.float32)


def swap_classes(logits: np.ndarray) -> np.ndarray:
    """T-shirt/top and Shirt exchanged, as a wrong class order would do."""
    return logits[:, [6, 1, 2, 3, 4, 5, 0, 7, 8, 9]]


class Perturbed:
    """A predictor whose logits pass through ``change``."""

    def __init__(self, predictor, change) -> None:
        self.predictor, self.change = predictor, change

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.change(self.predictor.predict(images))

    def describe(self) -> dict:
        return self.predictor.describe()


@pytest.mark.parametrize("change", [temperature, noise, swap_classes])
def test_a_perturbed_backend_is_caught(registry, dataset, monkeypatch, change):
    pixels = dataset.test_images[:2000]
    torch_backend = registry.backends["torch"]
    monkeypatch.setattr(torch_backend, "predictor", Perturbed(torch_backend.predictor, change))
    report = run_parity(registry, pixels)
    assert report["consistent"] is False
    pairs = {tuple(p["backends"]): p for p in report["pairs"]}
    caught = pairs[("onnx-torch", "torch")]
    assert caught["consistent"] is False and caught["max_abs_prob_diff"] > report["tolerance"]
    if change is temperature:
        assert caught["disagreements"] == []  # the labels alone would not show it
    else:
        assert len(caught["disagreements"]) > 0
    assert pairs[("onnx-tf", "savedmodel")]["consistent"] is True
    assert [name for name, model in report["models"].items() if not model["consistent"]] == [
        registry.identities()["torch"].model]


def test_compare_needs_answers_for_the_same_images(registry):
    pixels, _ = sample_images()
    logits = {name: registry.logits(name, pixels) for name in ("onnx-torch", "torch")}
    logits["torch"] = logits["torch"][:5]
    with pytest.raises(ValueError, match="different numbers of images"):
        parity_report(logits, registry.identities())


def drift_torch_weights(model_dir: Path, factor: float) -> None:
    """Scale the last layer of ``model.pt`` and make the manifest's checksums agree (a writer with access)."""
    import torch

    path = model_dir / "model.pt"
    state = torch.load(path, weights_only=True)
    last = [key for key in state if key.endswith(".weight")][-1].removesuffix(".weight")
    state[f"{last}.weight"] *= factor
    state[f"{last}.bias"] *= factor
    torch.save(state, path)
    manifest = read_manifest(model_dir)
    entry = manifest["artifacts"][BACKENDS["torch"].artifact]
    entry["sha256"] = checksum_tree(model_dir, entry["path"])
    write_manifest(model_dir, manifest)


def test_warm_up_refuses_readiness_when_an_artifact_drifted(exported, tmp_path):
    folder = tmp_path / "torch-model"
    shutil.copytree(exported["torch"], folder)
    drift_torch_weights(folder, 1.1)  # every logit scaled: the same labels, other probabilities
    name = read_manifest(folder)["name"]

    alone = load_registry({name: folder}, ("torch",))
    assert alone.ready, f"the drifted artifact must still pass the recorded-label check: {alone.error}"

    both = load_registry({name: folder}, ("onnx-torch", "torch"))
    assert not both.ready
    assert both.error.startswith("WarmupError: backends of one model disagree on the sample images")
    assert "onnx-torch vs torch" in both.error and "max |dp|" in both.error


def test_warm_up_keeps_checking_the_recorded_labels(exported, tmp_path):
    folder = tmp_path / "torch-model"
    shutil.copytree(exported["torch"], folder)
    drift_torch_weights(folder, -1.0)  # every label changes
    registry = load_registry({read_manifest(folder)["name"]: folder}, ("torch",))
    assert not registry.ready and "torch: warm-up predicted" in registry.error
