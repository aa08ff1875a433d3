"""What an export records about calibration and the "not clothing" detector (quick models, real data)."""

from __future__ import annotations

import numpy as np
import pytest

from fashion.backends import load_artifact
from fashion.calibration import _nll
from fashion.contract import preprocess, temperature_of
from fashion.data import train_val_split
from fashion.manifest import IntegrityError, read_manifest, verify_artifact
from fashion.ood import TARGET_TPR, load_detector


@pytest.fixture(scope="module")
def validation(dataset):
    split = train_val_split(dataset.train_labels)
    return dataset.train_images[split.val], dataset.train_labels[split.val]


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_manifest_records_a_temperature_that_minimises_validation_nll(exported, validation, framework):
    manifest = read_manifest(exported[framework])
    calibration = manifest["calibration"]
    assert calibration["ece_bins"] == 15 and "validation" in calibration["fitted_on"]
    temperature = temperature_of(manifest)
    assert temperature == calibration["temperature"] > 0
    images, labels = validation
    logits = load_artifact(exported[framework], "onnx", "onnx", device="cpu").predict(preprocess(images))
    best = _nll(logits, labels, temperature)
    assert best <= _nll(logits, labels, temperature * 1.05) and best <= _nll(logits, labels, temperature / 1.05)
    assert best <= _nll(logits, labels, 1.0)

def test_recorded_ece_is_what_the_test_set_gives(exported, dataset):
    """The manifest's before/after ECE are the test set's with T = 1 and the recorded T (a record, not a claim:
    on these barely trained models ECE need not fall, as NLL is what the fit minimises)."""
    from fashion.calibration import expected_calibration_error
    from fashion.contract import softmax

    manifest = read_manifest(exported["torch"])
    logits = load_artifact(exported["torch"], "onnx", "onnx", device="cpu").predict(preprocess(dataset.test_images))
    for key, temperature in (("test_ece_before", 1.0), ("test_ece_after", temperature_of(manifest))):
        measured = expected_calibration_error(softmax(logits, temperature), dataset.test_labels)
        assert manifest["calibration"][key] == pytest.approx(measured, abs=1e-4)


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_ood_detector_is_recorded_checksummed_and_meets_its_validation_tpr(exported, validation, framework):
    model_dir = exported[framework]
    manifest = read_manifest(model_dir)
    entry = manifest["ood"]
    detector = load_detector(verify_artifact(model_dir, entry))
    assert detector.threshold == pytest.approx(entry["threshold"])
    assert detector.temperature == pytest.approx(temperature_of(manifest))
    images, _ = validation
    logits = load_artifact(model_dir, "onnx", "onnx", device="cpu").predict(preprocess(images))
    tpr = detector.in_distribution(detector.score(logits, images)).mean()
    assert tpr == pytest.approx(TARGET_TPR, abs=0.002)
    blank = np.zeros((3, 28, 28), np.uint8)
    assert not detector.in_distribution(detector.score(
        load_artifact(model_dir, "onnx", "onnx", device="cpu").predict(preprocess(blank)), blank)).any()


def test_a_tampered_detector_is_refused(exported, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(exported["torch"], copy)
    target = copy / "ood.npz"
    payload = bytearray(target.read_bytes())
    payload[100] ^= 0xFF
    target.write_bytes(bytes(payload))
    with pytest.raises(IntegrityError):
        verify_artifact(copy, read_manifest(copy)["ood"])
