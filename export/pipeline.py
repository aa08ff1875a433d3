"""Export a training run: write artifacts, verify each against the source model, write the manifest."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export import artifacts
from fashion.backends import MODEL_NAMES, runtime_module
from fashion.calibration import ECE_BINS, expected_calibration_error, fit_temperature
from fashion.contract import CLASS_NAMES, INPUT_CONTRACT, preprocess, softmax
from fashion.data import FashionMNIST, train_val_split
from fashion.env import environment_stamp
from fashion.manifest import checksum_tree, content_version, read_manifest, write_manifest
from fashion.metrics import agreement
from fashion.samples import sample_images
from training.run import Run, load_trainer

DEFAULT_ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "artifacts"


class ExportError(RuntimeError):
    """An exported artifact failed a check; nothing was kept."""


@dataclass(frozen=True)
class ExportConfig:
    """Export settings.

    Attributes:
        opset: ONNX opset of the exported graphs.
        tolerance: largest allowed absolute difference between artifact and source probabilities.
        parity_images: how many real test images the parity check uses (at least 1,000).
        quantize: also try an int8 ONNX model (from the PyTorch export).
        max_int8_drop: keep the int8 model only if test accuracy drops by at most this much.
    """

    opset: int = 18  # the newest opset tf2onnx 1.17 writes; one opset for every ONNX artifact
    tolerance: float = 1e-5
    parity_images: int = 10000
    quantize: bool = True
    max_int8_drop: float = 0.003


def check_parity(name: str, logits: np.ndarray, reference: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Compare an artifact's logits with the source model's on the same images (fashion.metrics.agreement).

    Raises:
        ExportError: top-1 differs on any image, or probabilities differ by more than ``tolerance``.
    """
    found = agreement(logits, reference)
    if not found.within(tolerance):
        raise ExportError(
            f"{name}: parity failed on {found.images} test images: {len(found.disagreements)} top-1 disagreements "
            f"(first indices {found.disagreements[:5].tolist()}), max |prob diff| {found.max_abs_prob_diff:.3g} "
            f"(allowed {tolerance:g})"
        )
    return {"images": found.images, "top1_agreement": found.top1_agreement,
            "max_abs_prob_diff": found.max_abs_prob_diff}


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def _write_artifacts(framework: str, layers, staging: Path, opset: int) -> dict[str, dict[str, str]]:
    """Write the framework's artifacts; return ``{artifact: {path, format, runtime}}``."""
    if framework == "torch":
        artifacts.save_torch_state(layers, staging / "model.pt")
        artifacts.export_torch_onnx(layers, staging / "model.onnx", opset)
        written = {"torch": {"path": "model.pt", "format": "torch-state-dict", "runtime": "torch"}}
    else:
        artifacts.export_savedmodel(layers, staging / "saved_model")
        artifacts.export_tf_onnx(layers, staging / "model.onnx", opset)
        written = {"savedmodel": {"path": "saved_model", "format": "tf-savedmodel", "runtime": "savedmodel"}}
    artifacts.check_onnx(staging / "model.onnx")
    written["onnx"] = {"path": "model.onnx", "format": "onnx", "runtime": "onnx", "opset": opset}
    return written


def _try_int8(staging: Path, images, labels, source_accuracy: float, config: ExportConfig) -> dict[str, Any]:
    """Quantise the ONNX model; keep it only when the accuracy drop is within bounds."""
    target = staging / "model-int8.onnx"
    artifacts.quantize_int8(staging / "model.onnx", target)
    predictor = runtime_module("onnx").load(target, device="cpu")
    accuracy = _accuracy(predictor.predict(images), labels)
    drop = source_accuracy - accuracy
    report = {"accuracy": accuracy, "accuracy_drop": drop, "max_allowed_drop": config.max_int8_drop,
              "kept": drop <= config.max_int8_drop,
              # int8 may label a sample otherwise than the float32 source; the warm-up checks these instead.
              "samples_expected": predictor.predict(preprocess(sample_images()[0])).argmax(1).tolist()}
    if not report["kept"]:
        target.unlink()
    return report


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
              test_labels: np.ndarray) -> dict[str, Any]:
    """Fit the temperature on the validation split; report ECE on the test set before and after."""
    temperature = fit_temperature(val_logits, val_labels)
    return {"temperature": temperature, "fitted_on": f"validation split ({len(val_labels)} images)",
            "ece_bins": ECE_BINS,
            "test_ece_before": expected_calibration_error(softmax(test_logits), test_labels),
            "test_ece_after": expected_calibration_error(softmax(test_logits, temperature), test_labels)}


def write_ood(staging: Path, data: FashionMNIST, train_logits: np.ndarray, val_logits: np.ndarray,
              test_logits: np.ndarray, temperature: float) -> dict[str, Any]:
    """Fit the "not clothing" detector (fashion.ood), save it as ``ood.npz``; its manifest entry.

    ``train_logits`` and ``val_logits`` are the model's logits for the split's train and validation images.
    """
    from fashion import ood

    split = train_val_split(data.train_labels)
    detector = ood.fit_detector(data.train_images[split.train], train_logits, data.train_labels[split.train],
                                data.train_images[split.val], val_logits, temperature)
    detector.save(staging / "ood.npz")
    test_tpr = float(detector.in_distribution(detector.score(test_logits, data.test_images)).mean())
    return {"path": "ood.npz", "method": ood.METHOD, "threshold": detector.threshold,
            "target_val_tpr": ood.TARGET_TPR, "test_tpr": test_tpr, "components": ood.COMPONENTS,
            "tail_weight": ood.TAIL_WEIGHT, "weights": ood.WEIGHTS}


def export_run(run: Run, data: FashionMNIST, out_root: Path = DEFAULT_ARTIFACTS_DIR,
               config: ExportConfig = ExportConfig()) -> Path:
    """Export one run, verify every artifact, and write its manifest.

    The folder is built under a temporary name and renamed into place only once
    every check passed, so a failed export leaves nothing that looks usable.

    Returns:
        The model folder ``out_root/<model name>/<version>``.

    Raises:
        ExportError: an artifact failed its parity or accuracy check.
    """
    if config.parity_images < 1000:
        raise ValueError("parity needs at least 1,000 test images")
    name = MODEL_NAMES[run.framework]
    trainer = load_trainer(run, device="cpu")
    layers = trainer.dense_layers()
    images = preprocess(data.test_images)
    labels = data.test_labels
    reference = trainer.predict_logits(images)
    source_accuracy = _accuracy(reference, labels)
    parity_slice = slice(0, config.parity_images)
    staging = Path(out_root) / name / f".partial-{run.path.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        entries = _write_artifacts(run.framework, layers, staging, config.opset)
        for entry in entries.values():
            predictor = runtime_module(entry["runtime"]).load(staging / entry["path"], device="cpu",
                                                              manifest={"architecture": {
                                                                  "layer_sizes": artifacts.layer_sizes(layers)}})
            logits = predictor.predict(images)
            entry["parity"] = check_parity(f"{name}/{entry['path']}", logits[parity_slice],
                                           reference[parity_slice], config.tolerance)
            entry["test_accuracy"] = _accuracy(logits, labels)
            if entry["test_accuracy"] != source_accuracy:
                raise ExportError(f"{name}/{entry['path']}: test accuracy {entry['test_accuracy']} differs from "
                                  f"the source model's {source_accuracy}")
        split = train_val_split(data.train_labels)
        val_logits = trainer.predict_logits(preprocess(data.train_images[split.val]))
        calibration = calibrate(val_logits, data.train_labels[split.val], reference, labels)
        train_logits = trainer.predict_logits(preprocess(data.train_images[split.train]))
        ood_entry = write_ood(staging, data, train_logits, val_logits, reference, calibration["temperature"])
        int8 = _try_int8(staging, images, labels, source_accuracy, config) if (
            config.quantize and run.framework == "torch") else None
        if int8 and int8["kept"]:
            entries["onnx-int8"] = {"path": "model-int8.onnx", "format": "onnx-int8-dynamic", "runtime": "onnx",
                                    "opset": config.opset, "test_accuracy": int8["accuracy"],
                                    "samples_expected": int8["samples_expected"]}
        checksums: dict[str, str] = {}
        for entry in entries.values():
            entry["sha256"] = checksum_tree(staging, entry["path"])
            entry["bytes"] = sum((staging / p).stat().st_size for p in entry["sha256"])
            checksums.update(entry["sha256"])
        ood_entry["sha256"] = checksum_tree(staging, ood_entry["path"])
        version = content_version({**checksums, **ood_entry["sha256"]})
        manifest = {
            "name": name, "version": version, "framework": run.framework, "preset": run.preset,
            "seed": run.config.seed, "run": run.path.name, "train_samples": run.info["train_samples"],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "input_contract": INPUT_CONTRACT, "class_names": list(CLASS_NAMES),
            "architecture": {"layer_sizes": artifacts.layer_sizes(layers), "activation": "relu",
                             "batch_norm": "folded into the linear layers" if run.config.model.batch_norm else "none"},
            "source_test_accuracy": source_accuracy, "training_test_accuracy": run.metrics["accuracy"],
            "artifacts": entries, "int8": int8, "calibration": calibration, "ood": ood_entry,
            "environment": environment_stamp(),
            # What the source model predicts for the bundled sample images: the service's
            # warm-up must reproduce these before it reports ready.
            "samples_expected": trainer.predict_logits(preprocess(sample_images()[0])).argmax(1).tolist(),
        }
        write_manifest(staging, manifest)
        final = staging.with_name(version)
        if final.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def find_export(run: Run, out_root: Path = DEFAULT_ARTIFACTS_DIR) -> Path | None:
    """The newest export folder made from ``run``, if any."""
    found = [m.parent for m in Path(out_root, MODEL_NAMES[run.framework]).glob("*/manifest.json")
             if not m.parent.name.startswith(".") and read_manifest(m.parent)["run"] == run.path.name]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
