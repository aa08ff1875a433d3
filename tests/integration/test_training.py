"""Training in both frameworks, quick mode on real data."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from fashion.contract import preprocess
from fashion.metrics import classification_report
from training.config import ConfigError, config_from_dict, get_preset, load_presets
from training.loop import augment_batch, learning_rate_at
from training.run import FRAMEWORKS, load_run, load_trainer, make_train_data, train_run

ARTIFACTS = ("config.json", "history.json", "metrics.json", "run.json", "curves.png", "confusion.png")


def test_seed_presets_keep_every_digit():
    presets = load_presets()
    adam = presets["seed-adam"]
    assert adam.model.hidden_sizes == (485, 176, 131, 122)
    assert adam.optimizer.learning_rate == 0.00012885226472854095
    assert (adam.optimizer.beta1, adam.optimizer.beta2) == (0.986435025614692, 0.9904482393527106)
    assert (adam.batch_size, adam.epochs) == (128, 19)
    assert presets["seed-sgd"].optimizer.momentum == 0.31453202807460157
    assert presets["seed-rmsprop"].optimizer.rho == 0.9841212943927308
    assert {"best", "seed-adam", "seed-sgd", "seed-rmsprop"} <= set(presets)


def test_unknown_preset_and_keys_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        get_preset("nope")
    body = get_preset("seed-adam").to_dict()
    body["model"]["dense_1"] = 12
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['dense_1'\]"):
        config_from_dict(body)
    body = get_preset("seed-adam").to_dict()
    body["optimizer"]["name"] = "adagrad"
    with pytest.raises(ConfigError, match="adagrad"):
        config_from_dict(body)
    with pytest.raises(ConfigError, match="bad override"):
        get_preset("best", learning_rat=0.1)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**get_preset("seed-adam").to_dict(), "epoch": 3}))
    with pytest.raises(ConfigError, match="epoch"):
        get_preset(str(path))


def test_augmentation_shifts_and_flips_without_changing_content():
    rng = np.random.default_rng(0)
    from training.config import AugmentConfig

    image = np.zeros((1, 28, 28), np.float32)
    image[0, 10:18, 5:9] = 1.0
    out = augment_batch(np.repeat(image, 64, axis=0), AugmentConfig(max_shift=2, flip=True), rng)
    assert out.shape == (64, 28, 28)
    assert np.allclose(out.sum(axis=(1, 2)), image.sum())  # the object stays inside the frame
    assert len({o.tobytes() for o in out}) > 5
    assert augment_batch(image, AugmentConfig(), rng) is image


def test_onecycle_schedule_shape():
    optimizer = get_preset("best").optimizer
    rates = [learning_rate_at(s, 100, optimizer) for s in range(100)]
    assert max(rates) == pytest.approx(optimizer.learning_rate)
    assert rates[0] < rates[19] and rates[-1] < rates[0]


def test_same_data_for_both_frameworks(dataset):
    a, b = make_train_data(dataset, seed=0, limit=500), make_train_data(dataset, seed=0, limit=500)
    assert np.array_equal(a.train_labels, b.train_labels) and np.array_equal(a.train_images, b.train_images)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_quick_run_writes_artifacts_and_reloads_identically(quick_runs, dataset, framework):
    run = quick_runs[framework]
    for name in (*ARTIFACTS, run.info["weights_file"]):
        assert (run.path / name).is_file(), name
    assert run.info["train_samples"] == 3000 and run.info["epochs_run"] == 2
    assert run.metrics["accuracy"] > 0.6  # two epochs on 3,000 images: far above chance (0.1)
    assert len(run.metrics["per_class"]) == 10 and np.sum(run.metrics["confusion_matrix"]) == 10000
    reloaded = load_trainer(load_run(run.path), device="cpu")
    # Reloaded from disk, the model gives exactly the metrics the run recorded before saving.
    full = reloaded.predict_logits(preprocess(dataset.test_images))
    assert classification_report(full, dataset.test_labels) == run.metrics


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_folded_dense_layers_match_the_model(quick_runs, dataset, framework):
    trainer = load_trainer(quick_runs[framework], device="cpu")
    images = preprocess(dataset.test_images[:1000])
    x = images.reshape(len(images), -1)
    layers = trainer.dense_layers()
    assert len(layers) == 4  # three hidden layers with batch norm folded in, plus the output
    for i, (weight, bias) in enumerate(layers):
        x = x @ weight + bias
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    assert np.abs(x - trainer.predict_logits(images)).max() < 1e-3


def test_same_seed_same_metrics_in_pytorch(dataset, tmp_path):
    config = get_preset("seed-adam", epochs=1, limit=2000, seed=7)
    first = train_run("torch", "seed-adam", config, out=tmp_path, device="cpu", data=dataset, progress=False)
    second = train_run("torch", "seed-adam", config, out=tmp_path, device="cpu", data=dataset, progress=False)
    assert first.metrics == second.metrics
    other = train_run("torch", "seed-adam", dataclasses.replace(config, seed=8), out=tmp_path, device="cpu",
                      data=dataset, progress=False)
    assert other.metrics["loss"] != first.metrics["loss"]


def test_cli_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training", "--framework", "torch", "--preset", "seed-sgd", "--epochs", "1",
         "--limit", "1000", "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "torch/seed-sgd seed 0: test accuracy" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "training", "--preset", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown preset" in bad.stderr


def test_a_run_of_an_older_recipe_is_not_a_run_of_the_preset(monkeypatch, tmp_path):
    import training.run as run_module

    now = get_preset("best")
    changed = dataclasses.replace(now, augment=dataclasses.replace(now.augment, max_rotate=20.0, plain_epochs=5))
    runs = [run_module.Run(tmp_path / name, "torch", "best", config, {}, {}) for name, config in (
        ("as-now", now), ("reworded", dataclasses.replace(now, description="other words")),
        ("smoke", dataclasses.replace(now, limit=1000)), ("seed-1", dataclasses.replace(now, seed=1)))]
    monkeypatch.setattr(run_module, "find_runs", lambda out, framework, preset: runs)
    assert [r.path.name for r in run_module.full_runs(tmp_path, "torch", "best", now)] == ["as-now", "reworded"]
    assert run_module.full_runs(tmp_path, "torch", "best", changed) == []  # a changed preset is trained afresh
