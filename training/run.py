"""One training run end to end: data, fit, test metrics, artifacts and plots in one folder."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fashion.contract import preprocess
from fashion.data import FashionMNIST, load_fashion_mnist, train_val_split
from fashion.env import environment_stamp
from fashion.metrics import classification_report
from fashion.plots import plot_confusion_matrix, plot_training
from training.config import TrainConfig, config_from_dict
from training.loop import TrainData, Trainer, fit

FRAMEWORKS = ("torch", "tf")
DEFAULT_RUNS_DIR = Path(os.environ.get("FASHION_RUNS_DIR", Path(__file__).resolve().parents[1] / "runs"))


@dataclass(frozen=True)
class Run:
    """A finished run folder and what it says about itself."""

    path: Path
    framework: str
    preset: str
    config: TrainConfig
    info: dict[str, Any]
    metrics: dict[str, Any]


def trainer_class(framework: str) -> type:
    """The backend's Trainer class; importing only that framework."""
    if framework == "torch":
        from training.torch_trainer import TorchTrainer

        return TorchTrainer
    if framework == "tf":
        from training.tf_trainer import TfTrainer

        return TfTrainer
    raise ValueError(f"unknown framework {framework!r}; choose from {FRAMEWORKS}")


def make_train_data(data: FashionMNIST, seed: int = 0, limit: int | None = None) -> TrainData:
    """Preprocessed train/validation arrays from the one shared split.

    Args:
        data: the loaded dataset.
        seed: the run's seed; only used to choose the ``limit`` subset (the split itself is fixed).
        limit: train on this many samples of the training part (for smoke tests).
    """
    split = train_val_split(data.train_labels)
    train_index = split.train
    if limit is not None:
        train_index = np.sort(np.random.default_rng([seed, 3]).permutation(train_index)[:limit])
    return TrainData(
        train_images=preprocess(data.train_images[train_index]),
        train_labels=data.train_labels[train_index],
        val_images=preprocess(data.train_images[split.val]),
        val_labels=data.train_labels[split.val],
    )


def _write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def write_test_report(trainer: Trainer, data: FashionMNIST, run_dir: Path, title: str) -> dict[str, Any]:
    """Test-set metrics (metrics.json) and the confusion-matrix plot."""
    logits = trainer.predict_logits(preprocess(data.test_images))
    metrics = classification_report(logits, data.test_labels)
    _write_json(run_dir / "metrics.json", metrics)
    plot_confusion_matrix(metrics["confusion_matrix"], run_dir / "confusion.png", f"{title}: test set")
    return metrics


def train_run(
    framework: str, preset: str, config: TrainConfig, *, out: Path = DEFAULT_RUNS_DIR,
    device: str = "auto", data: FashionMNIST | None = None, progress: bool = True,
) -> Run:
    """Train one framework on one config and write every artifact.

    The run is built in a hidden folder and renamed into place only when complete,
    so a crashed or interrupted run never looks finished.

    Returns:
        The finished :class:`Run`.
    """
    data = data if data is not None else load_fashion_mnist()
    train_data = make_train_data(data, config.seed, config.limit)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    name = f"{preset}-s{config.seed}-{stamp}"
    final_dir = Path(out) / framework / name
    work_dir = final_dir.with_name("." + name + ".partial")
    work_dir.mkdir(parents=True)
    try:
        trainer = trainer_class(framework)(config, device)
        start = time.perf_counter()
        history = fit(trainer, train_data, config, progress=progress)
        seconds = time.perf_counter() - start
        weights_file = trainer.save(work_dir)
        title = f"{framework} {preset} (seed {config.seed})"
        metrics = write_test_report(trainer, data, work_dir, title)
        plot_training(history, work_dir / "curves.png", title)
        best = min(history, key=lambda row: row["val_loss"])
        chosen = best if config.early_stopping_patience is not None else history[-1]
        info = {
            "framework": framework, "preset": preset, "seed": config.seed, "device": trainer.device,
            "weights_file": weights_file, "train_samples": len(train_data.train_labels),
            "val_samples": len(train_data.val_labels), "epochs_run": len(history),
            "chosen_epoch": chosen["epoch"], "val_accuracy": chosen["val_accuracy"],
            "val_loss": chosen["val_loss"], "test_accuracy": metrics["accuracy"],
            "test_loss": metrics["loss"], "train_seconds": round(seconds, 2),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"), "environment": environment_stamp(),
        }
        _write_json(work_dir / "config.json", config.to_dict())
        _write_json(work_dir / "history.json", history)
        _write_json(work_dir / "run.json", info)
        work_dir.rename(final_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return load_run(final_dir)


def load_run(run_dir: Path) -> Run:
    """Read a finished run folder (config strictly parsed)."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    config = config_from_dict(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return Run(run_dir, info["framework"], info["preset"], config, info, metrics)


def load_trainer(run: Run, device: str = "auto") -> Trainer:
    """Rebuild the run's model from its config and saved weights."""
    return trainer_class(run.framework).load(run.config, run.path, device)


def find_runs(out: Path = DEFAULT_RUNS_DIR, framework: str | None = None, preset: str | None = None) -> list[Run]:
    """Finished runs under ``out``, oldest first, filtered by framework and preset."""
    runs = []
    for info_path in sorted(Path(out).glob("*/*/run.json")):
        if info_path.parent.name.startswith("."):
            continue
        run = load_run(info_path.parent)
        if (framework is None or run.framework == framework) and (preset is None or run.preset == preset):
            runs.append(run)
    return sorted(runs, key=lambda r: r.info["finished"])


def same_recipe(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configs train the same model (their descriptions aside)."""
    return replace(a, description="") == replace(b, description="")


def full_runs(out: Path, framework: str, preset: str, config: TrainConfig) -> list[Run]:
    """Finished full-data runs of ``preset`` trained with ``config``, oldest first.

    A run of an older version of the preset does not count, so a changed preset is trained afresh.
    """
    return [r for r in find_runs(out, framework, preset) if r.config.limit is None and same_recipe(r.config, config)]
