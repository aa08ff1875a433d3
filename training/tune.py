"""Hyperparameter search like the seed's sweeps, offline: ``python -m training.tune``.

Optuna's TPE sampler (Bayesian optimisation) over exactly the seed project's
search space, one study per optimiser, minimising validation loss on the shared
split, with a median pruner fed each epoch's validation loss. Studies live in
SQLite by default, so an interrupted search resumes with the same command; any
Optuna RDB URL (PostgreSQL, MySQL) works unchanged, which is how several machines
work on one study at once: start the same command on each, pointing
``--storage`` at the same database (docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from fashion.data import DataError, load_fashion_mnist
from training.config import ConfigError, config_from_dict
from training.loop import fit
from training.run import DEFAULT_RUNS_DIR, FRAMEWORKS, make_train_data, trainer_class

OPTIMIZERS = ("sgd", "adam", "rmsprop")
BATCH_SIZES = (16, 32, 64, 128, 256)
# Seconds: a trial whose process died is marked failed after this long without a heartbeat, then retried once.
HEARTBEAT, GRACE = 2, 6
MAX_RETRY = 1
FINISHED = ("COMPLETE", "PRUNED")


# For tests only (FASHION_TUNE_HOLD_FILE): while this file exists, a trial that has reported its first epoch
# writes its number to ``<file>.trial`` and waits, so a test can kill its worker mid-trial without a race.
HOLD_ENV = "FASHION_TUNE_HOLD_FILE"


class SurplusTrialError(Exception):
    """This trial would pass the study's cap: it ends as FAIL (user attr ``surplus``) without training."""


def slot_key(trial) -> int:
    """A trial's place in the queue for the capped slots: a retry keeps the place of the trial it retries."""
    return trial.system_attrs.get("failed_trial", trial.number)


def slot_groups(trials) -> dict[int, list]:
    """Trials grouped by slot: an original trial and its retries share one slot."""
    groups: dict[int, list] = {}
    for trial in trials:
        groups.setdefault(slot_key(trial), []).append(trial)
    return groups


def holds_slot(group: list) -> bool:
    """Whether a slot is taken: a member is not failed, or the last failure will still be retried.

    A trial failed by a stale heartbeat (its process died) is retried by ``RetryHeartbeatStaleTrialCallback``, so its
    slot stays taken until the retry runs; a surplus trial, an objective error or a spent retry frees it.
    """
    if any(t.state.name != "FAIL" for t in group):
        return True
    last = max(group, key=lambda t: t.number)
    return not ({"surplus", "error"} & set(last.user_attrs)) and len(group) <= MAX_RETRY


def count_finished(trials) -> int:
    """Slots whose trial finished (complete or pruned): the number the ``--trials`` cap applies to."""
    return sum(any(t.state.name in FINISHED for t in g) for g in slot_groups(trials).values())


def wait_for_slot(study, trial, cap: int) -> None:
    """Block until this trial may train, or raise ``SurplusTrialError``; this is what makes the cap exact.

    Optuna's ``MaxTrialsCallback`` stops a worker after the cap is reached, but trials other workers already
    started still finish, so N workers overshoot by up to N - 1. Here a trial trains only while fewer than
    ``cap`` slots ahead of it (smaller ``slot_key``) are taken; otherwise it waits, keeping its heartbeat,
    until one frees (a killed trial failed for good) or the cap is met. It gives way to a queued retry
    ahead of it so that retry is not starved by workers all waiting here.
    """
    import optuna

    while True:
        trials = study.get_trials(deepcopy=False)
        mine = slot_key(next(t for t in trials if t.number == trial.number))  # the stored trial has system_attrs
        groups = slot_groups(t for t in trials if t.number != trial.number)
        if sum(holds_slot(g) for k, g in groups.items() if k < mine) < cap:
            return
        queued_ahead = any(t.state.name == "WAITING" and slot_key(t) < mine for t in trials)
        if count_finished(trials) >= cap or queued_ahead:
            trial.set_user_attr("surplus", True)
            raise SurplusTrialError(f"trial {trial.number} is beyond the cap of {cap}")
        time.sleep(HEARTBEAT)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a waiting worker also notices a dead one


def suggest_config(trial, optimizer: str, seed: int, limit: int | None) -> dict[str, Any]:
    """One point of the seed project's search space, as a preset mapping."""
    hidden = [trial.suggest_int("hidden_1", 256, 512), trial.suggest_int("hidden_2", 128, 256),
              trial.suggest_int("hidden_3", 128, 256), trial.suggest_int("hidden_4", 32, 128)]
    learning_rate = trial.suggest_float("learning_rate", 1e-4, 0.1, log=True)
    opt: dict[str, Any] = {"name": optimizer, "learning_rate": learning_rate}
    if optimizer == "sgd":
        opt["momentum"] = trial.suggest_float("momentum", 0.0, 0.9)
    elif optimizer == "adam":
        opt["beta1"] = trial.suggest_float("beta1", 0.9, 0.999)
        opt["beta2"] = trial.suggest_float("beta2", 0.99, 0.9999)
    else:
        opt["momentum"] = trial.suggest_float("momentum", 0.0, 0.9)
        opt["rho"] = trial.suggest_float("rho", 0.8, 0.999)
    return {"model": {"hidden_sizes": hidden}, "optimizer": opt,
            "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
            "epochs": trial.suggest_int("epochs", 15, 50), "seed": seed, "limit": limit}


def with_driver(url: str) -> str:
    """``url`` with a bare PostgreSQL scheme pointed at psycopg 3 (the ``tune`` extra's driver).

    SQLAlchemy reads ``postgresql://`` as psycopg2, which nothing here installs; an explicit driver
    (``postgresql+psycopg2://``, ``mysql+pymysql://``) is kept as given.
    """
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    return url


def open_study(storage_url: str, name: str, seed: int):
    """Create or load a study; refuses an unusable storage URL with a clear error."""
    import optuna

    try:
        storage = optuna.storages.RDBStorage(
            with_driver(storage_url), heartbeat_interval=HEARTBEAT, grace_period=GRACE,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except Exception as exc:  # SQLAlchemy raises many types for bad URLs and unreachable servers
        raise ConfigError(f"cannot open the study storage {storage_url!r}: {type(exc).__name__}: {exc}") from None
    return optuna.create_study(
        study_name=name, storage=storage, direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    )


def hold_while(hold: Path | None, trial_number: int) -> None:
    """The test gate (``FASHION_TUNE_HOLD_FILE``): say which trial is mid-training, then wait while ``hold`` exists."""
    if hold is None or not hold.exists():
        return
    hold.with_name(hold.name + ".trial").write_text(str(trial_number))
    while hold.exists():
        time.sleep(0.1)  # Optuna's heartbeat thread keeps the trial alive meanwhile


def objective(framework: str, optimizer: str, data, seed: int, limit: int | None, cap: int,
              hold: Path | None = None):
    """The Optuna objective: wait for a slot under ``cap``, train one configuration, report each epoch,
    return the best validation loss. ``hold``: the test gate, see :func:`hold_while`."""
    import optuna

    def run(trial) -> float:
        # Sample first: the stored params are what a retry of this trial replays if its process dies.
        params = suggest_config(trial, optimizer, seed, limit)
        wait_for_slot(trial.study, trial, cap)
        # Which machine and process trained it: on a shared study, where to look when a trial fails.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            return train(trial, params)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # marks the failure as final: no retry is coming, the slot is free
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise

    def train(trial, params: dict[str, Any]) -> float:
        config = config_from_dict(params, f"trial {trial.number}")
        trainer = trainer_class(framework)(config, "auto")

        def report(row: dict[str, float]) -> None:
            trial.report(row["val_loss"], step=int(row["epoch"]))
            hold_while(hold, trial.number)
            if trial.should_prune():
                raise optuna.TrialPruned()

        history = fit(trainer, data, config, progress=False, on_epoch=report)
        losses = [row["val_loss"] for row in history]
        trial.set_user_attr("val_accuracy", max(row["val_accuracy"] for row in history))
        return min(losses) if all(math.isfinite(v) for v in losses) else float("inf")

    return run


def complete(study) -> list:
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def run_study(study, framework: str, optimizer: str, data, trials: int, timeout: float | None, seed: int,
              limit: int | None, hold: Path | None = None) -> None:
    """Run until the study has exactly ``trials`` finished (complete or pruned) trials, or ``timeout`` passes.

    Any number of processes, on any machines sharing the storage, may run this on one study at once.
    """
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if count_finished(study.get_trials(deepcopy=False)) >= trials:
        return

    def stop_when_full(study, _trial) -> None:
        if count_finished(study.get_trials(deepcopy=False)) >= trials:
            study.stop()

    study.optimize(objective(framework, optimizer, data, seed, limit, trials, hold), timeout=timeout,
                   callbacks=[stop_when_full], catch=(SurplusTrialError,), gc_after_trial=True)


def best_preset(study, optimizer: str) -> dict[str, Any]:
    """The best trial as a preset file the training CLI accepts as is (full data, no limit)."""
    best = study.best_trial
    p = best.params
    opt = {"name": optimizer, "learning_rate": p["learning_rate"]}
    for key in ("momentum", "beta1", "beta2", "rho"):
        if key in p:
            opt[key] = p[key]
    return {
        "description": f"Tuned by `python -m training.tune` ({study.study_name}, trial {best.number}, "
                       f"validation loss {best.value:.4f}).",
        "model": {"hidden_sizes": [p["hidden_1"], p["hidden_2"], p["hidden_3"], p["hidden_4"]]},
        "optimizer": opt, "batch_size": p["batch_size"], "epochs": p["epochs"],
    }


def plot_study(study, folder: Path) -> list[str]:
    """Optimisation history and parameter importance PNGs."""
    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    names = []
    for kind, draw in (("history", vis.plot_optimization_history), ("importance", vis.plot_param_importances)):
        if kind == "importance" and len(complete(study)) < 2:
            continue
        ax = draw(study)
        name = f"{study.study_name}-{kind}.png"
        ax.figure.set_size_inches(7, 4.5)
        ax.figure.tight_layout()
        ax.figure.savefig(folder / name, dpi=100)
        plt.close(ax.figure)
        names.append(name)
    return names


def summary_table(studies: dict[str, Any]) -> list[str]:
    """A table like the seed's best-values table: one column per optimiser."""
    presets = {opt: best_preset(study, opt) for opt, study in studies.items()}
    rows = [
        ("batch size", lambda p: p["batch_size"]), ("epochs", lambda p: p["epochs"]),
        ("hidden units", lambda p: ", ".join(map(str, p["model"]["hidden_sizes"]))),
        ("learning rate", lambda p: f"{p['optimizer']['learning_rate']:.6g}"),
        ("momentum", lambda p: f"{p['optimizer']['momentum']:.4f}" if "momentum" in p["optimizer"] else "–"),
        ("beta1 / beta2", lambda p: f"{p['optimizer']['beta1']:.4f} / {p['optimizer']['beta2']:.5f}"
         if "beta1" in p["optimizer"] else "–"),
        ("rho", lambda p: f"{p['optimizer']['rho']:.4f}" if "rho" in p["optimizer"] else "–"),
    ]
    lines = ["| | " + " | ".join(presets) + " |", "| --- |" + " --- |" * len(presets)]
    lines += [f"| {label} | " + " | ".join(str(get(p)) for p in presets.values()) + " |" for label, get in rows]
    lines.append("| best validation loss | " + " | ".join(f"{s.best_value:.4f}" for s in studies.values()) + " |")
    lines.append("| trials complete / pruned / failed | " + " | ".join(
        "{} / {} / {}".format(*(sum(t.state.name == k for t in s.trials) for k in ("COMPLETE", "PRUNED", "FAIL")))
        for s in studies.values()) + " |")
    return lines


SEED_BEST = {
    "sgd": {"batch size": 128, "epochs": 20, "hidden units": "414, 205, 141, 106", "learning rate": "0.0841842",
            "momentum": "0.3145", "beta1 / beta2": "–", "rho": "–"},
    "adam": {"batch size": 128, "epochs": 19, "hidden units": "485, 176, 131, 122", "learning rate": "0.000128852",
             "momentum": "–", "beta1 / beta2": "0.9864 / 0.99045", "rho": "–"},
    "rmsprop": {"batch size": 256, "epochs": 15, "hidden units": "363, 246, 147, 99", "learning rate": "0.00126629",
                "momentum": "0.2757", "beta1 / beta2": "–", "rho": "0.9841"},
}


def write_summary(studies: dict[str, Any], args: argparse.Namespace, trained: Any | None) -> Path:
    """``summary.md`` in the output folder: our best values beside the seed's, plots, the full-data run."""
    lines = [
        "# Tuning: the seed's search space, offline", "",
        f"`python -m training.tune --framework {args.framework} --trials {args.trials}"
        f"{f' --limit {args.limit}' if args.limit else ''} --seed {args.seed}` (TPE sampler, median pruner on "
        f"per-epoch validation loss; objective: lowest validation loss on the shared 12,000-image validation split; "
        f"training on {args.limit or 48000:,} images of the training part).", "",
        "## Best values found", "", *summary_table(studies), "",
        "## The seed project's best values (50 trials per optimiser on a hosted sweep service)", "",
        "| | " + " | ".join(studies) + " |", "| --- |" + " --- |" * len(studies),
    ]
    for label in ("batch size", "epochs", "hidden units", "learning rate", "momentum", "beta1 / beta2", "rho"):
        lines.append(f"| {label} | " + " | ".join(str(SEED_BEST[o][label]) for o in studies) + " |")
    if trained is not None:
        lines += ["", "## The winner trained on the full data", "",
                  f"`python -m training --framework {trained.framework} --preset {args.out / trained.preset}.json`: "
                  f"test accuracy **{trained.info['test_accuracy']:.4f}** "
                  f"(validation {trained.info['val_accuracy']:.4f}, {trained.info['epochs_run']} epochs, "
                  f"{trained.info['train_seconds']:.0f} s). Compare with the seed presets in results/accuracy.md."]
    path = args.summary or args.out / "summary.md"
    plots = sorted(args.out.glob("*.png"))
    lines += ["", *[f"![{p.name}]({os.path.relpath(p, path.parent)})" for p in plots]]
    path.write_text("\n".join(lines) + "\n")
    return path


def train_best(studies: dict[str, Any], framework: str, out: Path, seed: int):
    """Train the best study's preset on the full data (the tuned preset as the training CLI reads it)."""
    from training.config import get_preset
    from training.run import train_run

    optimizer = min(studies, key=lambda o: studies[o].best_value)
    name = f"tuned-{framework}-{optimizer}"
    config = get_preset(str(out / f"{name}.json"), seed=seed)
    return train_run(framework, name, config, out=DEFAULT_RUNS_DIR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tune", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    parser.add_argument("--optimizer", choices=[*OPTIMIZERS, "all"], default="all")
    parser.add_argument("--trials", type=int, default=20, help="finished trials wanted per optimiser (in total)")
    parser.add_argument("--timeout", type=float, default=None, help="stop each study after this many seconds")
    parser.add_argument("--limit", type=int, default=None, help="train on N images of the training part")
    parser.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    parser.add_argument("--storage", default=None,
                        help="Optuna RDB URL (default: sqlite:///<out>/tuning.db); postgresql://user@host/db "
                        "for many workers or machines (pip install 'fashion-serve[tune]')")
    parser.add_argument("--study-prefix", default="fashion", help="studies are named <prefix>-<framework>-<optimizer>")
    parser.add_argument("--out", type=Path, default=DEFAULT_RUNS_DIR / "tuning", help="folder for presets and plots")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--summary", type=Path, default=None, help="where the Markdown summary goes "
                        "(default: <out>/summary.md)")
    parser.add_argument("--train-best", action="store_true",
                        help="then train the best optimiser's preset on the full data and report its test accuracy")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(args.out / 'tuning.db').resolve()}"
    hold = Path(os.environ[HOLD_ENV]) if os.environ.get(HOLD_ENV) else None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        data = make_train_data(load_fashion_mnist(args.data_dir), args.seed, args.limit)
        studies = {}
        for optimizer in OPTIMIZERS if args.optimizer == "all" else (args.optimizer,):
            study = open_study(storage, f"{args.study_prefix}-{args.framework}-{optimizer}", args.seed)
            start = time.perf_counter()
            run_study(study, args.framework, optimizer, data, args.trials, args.timeout, args.seed, args.limit, hold)
            studies[optimizer] = study
            preset_path = args.out / f"tuned-{args.framework}-{optimizer}.json"
            preset_path.write_text(json.dumps(best_preset(study, optimizer), indent=2) + "\n")
            plots = plot_study(study, args.out)
            print(f"{study.study_name}: {len(study.trials)} trials, best validation loss {study.best_value:.4f} "
                  f"(trial {study.best_trial.number}) in {time.perf_counter() - start:.0f}s -> {preset_path}; "
                  f"plots: {', '.join(plots)}", flush=True)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    trained = train_best(studies, args.framework, args.out, args.seed) if args.train_best else None
    print(f"summary: {write_summary(studies, args, trained)}")
    print("\n".join(summary_table(studies)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
