"""Versions in the registry (service.registry), Triton's statistics (service.stats) and shadow and canary modes
(service.shadow), on stand-in backends: no model is loaded."""

from __future__ import annotations

import random

import numpy as np
import pytest

from service.config import ServiceConfig
from service.registry import LoadedBackend, ModelRegistry, version_key
from service.shadow import Mode, ShadowStats, Traffic
from service.stats import STAGES, ModelStats, RequestTiming

NAME = "onnx-torch"


def backend(version: str) -> LoadedBackend:
    manifest = {"name": "fashion-mlp-torch", "version": version, "run": f"run-{version}", "preset": "best",
                "seed": 0, "source_test_accuracy": 0.9, "created": "2026-01-01T00:00:00+00:00",
                "artifacts": {"onnx": {"path": "model.onnx", "sha256": {"model.onnx": version * 4}}}}
    return LoadedBackend(NAME, predictor=None, manifest=manifest)


@pytest.fixture
def registry() -> ModelRegistry:
    found = ModelRegistry(ServiceConfig(backends=(NAME,), default_backend=NAME))
    first = backend("aaaa")
    found.backends, found.versions, found.ready = {NAME: first}, {NAME: {"aaaa": first}}, True
    return found


def test_a_request_is_pinned_to_the_version_serving_when_it_was_parsed(registry):
    pinned = registry.pin(None)
    registry.add_version(backend("bbbb"))
    assert registry.pin(NAME) == pinned == version_key(NAME, "aaaa")
    assert registry.pin(NAME, "bbbb") == version_key(NAME, "bbbb")
    assert registry.promote(NAME, "bbbb") == "aaaa"
    assert registry.get(pinned).version == "aaaa" and registry.get(NAME).version == "bbbb"
    with pytest.raises(KeyError, match="no loaded version 'cccc'"):
        registry.pin(NAME, "cccc")


def test_the_serving_version_cannot_be_removed_and_a_removed_one_drains_until_dropped(registry):
    registry.add_version(backend("bbbb"))
    with pytest.raises(ValueError, match="serves"):
        registry.remove_version(NAME, "aaaa")
    key = version_key(NAME, "bbbb")
    registry.remove_version(NAME, "bbbb")
    assert registry.get(key).version == "bbbb"  # a request pinned before the unload still finds it
    with pytest.raises(KeyError):
        registry.pin(NAME, "bbbb")  # a new one does not
    registry.drop(NAME, "bbbb")
    with pytest.raises(KeyError):
        registry.get(key)


def test_model_info_lists_every_loaded_version_with_its_lineage(registry):
    registry.add_version(backend("bbbb"))
    registry.promote(NAME, "bbbb")
    listed = ModelRegistry.loaded_versions(registry, NAME)
    assert [(v["version"], v["serving"], v["run"]) for v in listed] == [("aaaa", False, "run-aaaa"),
                                                                         ("bbbb", True, "run-bbbb")]
    assert registry.previous == {NAME: "aaaa"}


def test_statistics_are_in_tritons_shape_and_count_a_shared_model_call_once():
    stats = ModelStats()
    for images in (2, 3):
        stats.record_success(NAME, "aaaa", RequestTiming(images, 0.010, 0.001, 0.002, 0.004, 0.001, execution=7))
    stats.record_failure(NAME, "aaaa", 0.005)
    [model] = stats.model_stats({NAME: ["aaaa", "bbbb"]})["model_stats"][:1]
    assert set(model["inference_stats"]) == set(STAGES)
    assert model["inference_count"] == 5 and model["execution_count"] == 1
    assert model["inference_stats"]["success"] == {"count": 2, "ns": 20_000_000}
    assert model["inference_stats"]["queue"] == {"count": 2, "ns": 4_000_000}
    assert model["inference_stats"]["fail"] == {"count": 1, "ns": 5_000_000}
    untouched = stats.model_stats({NAME: ["bbbb"]})["model_stats"][0]
    assert untouched["inference_count"] == 0 and untouched["inference_stats"]["success"] == {"count": 0, "ns": 0}


def test_shadow_statistics_count_agreement_and_the_largest_probability_difference():
    stats = ShadowStats()
    served = np.array([[0.9, 0.1], [0.2, 0.8]])
    shadow = np.array([[0.7, 0.3], [0.6, 0.4]])
    assert stats.add(served, shadow, 0.004).tolist() == pytest.approx([0.2, 0.4])
    described = stats.describe()
    assert described["agreement"] == 0.5 and described["max_abs_dp"] == pytest.approx(0.4)
    assert described["mean_abs_dp"] == pytest.approx(0.3) and described["mean_latency_ms"] == pytest.approx(4)


def test_a_mode_takes_its_share_and_ends_on_request():
    traffic = Traffic(random.Random(0))
    traffic.set(NAME, Mode("canary", "bbbb", 0.25))
    chosen = sum(traffic.chosen(NAME, "canary") == "bbbb" for _ in range(4000))
    assert 800 < chosen < 1200 and traffic.chosen(NAME, "shadow") is None
    traffic.end(NAME, "cccc")  # another version's end leaves it
    assert traffic.modes
    traffic.end(NAME)
    assert traffic.chosen(NAME, "canary") is None


def test_a_promotion_ends_the_canary(registry):
    registry.add_version(backend("bbbb"))
    registry.traffic.set(NAME, Mode("canary", "bbbb", 1.0))
    assert registry.pin(NAME) == version_key(NAME, "bbbb")
    registry.promote(NAME, "bbbb")
    registry.promote(NAME, "aaaa")
    assert registry.pin(NAME) == version_key(NAME, "aaaa")
