"""Hyperparameter tuning: studies per optimiser, resume after a kill, presets the training CLI accepts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import wait_until
from training.config import ConfigError, get_preset
from training.tune import GRACE, OPTIMIZERS, main, open_study

REPO = Path(__file__).resolve().parents[2]


def test_a_three_trial_study_completes_for_each_optimizer(tmp_path, capsys):
    assert main(["--trials", "3", "--limit", "300", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for optimizer in OPTIMIZERS:
        study = open_study(f"sqlite:///{tmp_path / 'tuning.db'}", f"fashion-torch-{optimizer}", 0)
        assert sum(t.state.is_finished() for t in study.trials) == 3
        preset = tmp_path / f"tuned-torch-{optimizer}.json"
        config = get_preset(str(preset))
        assert config.optimizer.name == optimizer and len(config.model.hidden_sizes) == 4
        assert 256 <= config.model.hidden_sizes[0] <= 512 and config.batch_size in (16, 32, 64, 128, 256)
        assert (tmp_path / f"fashion-torch-{optimizer}-history.png").stat().st_size > 0
    assert "| batch size |" in printed and "| rho |" in printed


def _tune(out: Path, log: Path) -> subprocess.Popen:
    """The tuner in a process of its own, its output in ``log`` (a pipe nobody reads could fill and stall it)."""
    with log.open("ab") as sink:
        return subprocess.Popen([sys.executable, "-m", "training.tune", "--optimizer", "adam", "--trials", "4",
                                 "--limit", "300", "--out", str(out)], cwd=REPO, stdout=sink, stderr=sink)


def _states(study) -> list[tuple[int, str]]:
    return [(trial.number, trial.state.name) for trial in study.get_trials(deepcopy=False)]


def _one_complete_and_one_training(study) -> list[tuple[int, str]]:
    """The states once a trial is COMPLETE and a RUNNING one has reported an epoch: all its parameters are then in
    the study (they are suggested before training), so its retry can be checked against them. A kill before that
    (ci12, 2026-11-28) left a trial with no parameters, and its retry sampled new ones."""
    trials = study.get_trials(deepcopy=False)
    complete = any(t.state.name == "COMPLETE" for t in trials)
    training = any(t.state.name == "RUNNING" and t.intermediate_values for t in trials)
    return _states(study) if complete and training else []


def test_killed_study_resumes_without_losing_or_duplicating_trials(tmp_path):
    db, log = tmp_path / "tuning.db", tmp_path / "tune.log"
    # The study (and its tables) exist before the tuner starts: it loads this one, and reading it through
    # Optuna's API never races the tuner's creation of the schema.
    study = open_study(f"sqlite:///{db}", "fashion-torch-adam", 0)
    proc = _tune(tmp_path, log)
    try:
        # Hang guard: a trial takes seconds to a minute on a busy 2-core machine.
        wait_until(lambda: _one_complete_and_one_training(study),
                   "one COMPLETE trial and one RUNNING trial past its first epoch", 600, interval=0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _states(study)
    killed = [n for n, s in before if s == "RUNNING"]
    assert killed and any(s == "COMPLETE" for _, s in before)
    # Not a race: the process is dead, so its last heartbeat only ages; Optuna fails the trial on the rerun's
    # start once it is older than GRACE.
    time.sleep(GRACE + 1)
    rerun = _tune(tmp_path, log)
    assert rerun.wait(1200) == 0, log.read_text()[-2000:]  # hang guard: about 2 minutes expected
    study = open_study(f"sqlite:///{db}", "fashion-torch-adam", 0)  # afresh: nothing cached from before the rerun
    after = _states(study)
    numbers = [n for n, _ in after]
    assert len(numbers) == len(set(numbers)) > len(before)
    assert dict(after)[killed[0]] == "FAIL"
    assert sum(s in ("COMPLETE", "PRUNED") for _, s in after) >= 4
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0]]
    assert retried and retried[0].params == study.trials[killed[0]].params  # the lost trial ran again


def test_a_written_preset_trains_with_the_training_cli(tmp_path):
    preset = tmp_path / "tuned.json"
    preset.write_text(json.dumps({
        "description": "as written by training.tune",
        "model": {"hidden_sizes": [300, 150, 140, 60]},
        "optimizer": {"name": "rmsprop", "learning_rate": 0.001, "momentum": 0.2, "rho": 0.95},
        "batch_size": 64, "epochs": 17,
    }))
    result = subprocess.run([sys.executable, "-m", "training", "--framework", "torch", "--preset", str(preset),
                             "--epochs", "1", "--limit", "500", "--out", str(tmp_path), "--quiet"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "torch/tuned seed 0: test accuracy" in result.stdout


@pytest.mark.parametrize("url", ["nonsense://nowhere", "sqlite:////no/such/folder/x.db"])
def test_a_bad_storage_url_is_a_clear_error(url, tmp_path, capsys):
    with pytest.raises(ConfigError, match="cannot open the study storage"):
        open_study(url, "x", 0)
    assert main(["--optimizer", "sgd", "--trials", "1", "--limit", "100", "--storage", url,
                 "--out", str(tmp_path)]) == 2
    assert "cannot open the study storage" in capsys.readouterr().err
