"""Accuracy table from real runs: ``python -m training.report --train``.

Trains what is missing (each seed preset once, ``best`` over several seeds, both
frameworks, full data), then writes ``results/accuracy.md`` with the seed
project's published numbers beside ours, and copies the plots of ``best``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

from fashion.data import load_fashion_mnist
from fashion.env import environment_stamp
from training.config import get_preset
from training.run import DEFAULT_RUNS_DIR, FRAMEWORKS, Run, full_runs, train_run

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
SEED_PRESETS = ("seed-adam", "seed-adam-native-init", "seed-sgd", "seed-rmsprop")
# The seed project's published figures (its final model used Adam): (validation, test).
PUBLISHED = {("tf", "seed-adam"): (0.8946, 0.8867), ("torch", "seed-adam"): (0.8858, 0.8759),
             ("tf", "seed-adam-native-init"): (0.8946, 0.8867), ("torch", "seed-adam-native-init"): (0.8858, 0.8759)}
FRAMEWORK_NAMES = {"torch": "PyTorch", "tf": "TensorFlow"}


def runs_of(runs_dir: Path, framework: str, preset: str, seed: int) -> list[Run]:
    """Finished full-data runs of one framework, preset (as it is now) and seed."""
    return full_runs(runs_dir, framework, preset, get_preset(preset, seed=seed))


def train_missing(runs_dir: Path, plan: list[tuple[str, int]]) -> None:
    """Train every (preset, seed) of ``plan`` in both frameworks unless a full run exists."""
    data = None
    for preset, seed in plan:
        for framework in FRAMEWORKS:
            if runs_of(runs_dir, framework, preset, seed):
                continue
            data = data if data is not None else load_fashion_mnist()
            run = train_run(framework, preset, get_preset(preset, seed=seed), out=runs_dir, data=data)
            print(f"{framework}/{preset} seed {seed}: test {run.info['test_accuracy']:.4f}")


def _mean_spread(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def render(runs_dir: Path, plan: list[tuple[str, int]]) -> str:
    """The Markdown report."""
    env = environment_stamp()
    libs = env["libraries"]
    lines = [
        "# Accuracy: PyTorch and TensorFlow on the same split",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m training.report --train` on "
        f"{env['cpu']} ({env['cores']} cores, no GPU); Python {libs['python']}, torch {libs.get('torch')}, "
        f"TensorFlow {libs.get('tensorflow')}, Keras {libs.get('keras')}, numpy {libs.get('numpy')}.",
        "",
        "Full data: 48,000 training and 12,000 validation images (the shared stratified split), "
        "test on the official 10,000. `best` is the mean ± standard deviation over the seeds listed; "
        "validation accuracy is that of the epoch whose weights were kept.",
        "",
        "| framework | preset | seeds | val accuracy | test accuracy | epochs run | train time (s) "
        "| seed project's val / test |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    presets = list(dict.fromkeys(p for p, _ in plan))
    for preset in presets:
        seeds = [s for p, s in plan if p == preset]
        for framework in FRAMEWORKS:
            runs = [found[-1] for found in (runs_of(runs_dir, framework, preset, s) for s in seeds) if found]
            if not runs:
                continue
            published = PUBLISHED.get((framework, preset))
            seconds = [r.info["train_seconds"] for r in runs]
            lines.append(
                f"| {FRAMEWORK_NAMES[framework]} | {preset} | {', '.join(str(r.config.seed) for r in runs)} "
                f"| {_mean_spread([r.info['val_accuracy'] for r in runs])} "
                f"| {_mean_spread([r.info['test_accuracy'] for r in runs])} "
                f"| {_mean_spread([r.info['epochs_run'] for r in runs], 0)} "
                f"| {_mean_spread(seconds, 0)}{f' (max {max(seconds):.0f})' if len(seconds) > 1 else ''} "
                f"| {f'{published[0]:.4f} / {published[1]:.4f}' if published else '–'} |"
            )
    return "\n".join(lines) + "\n"


def copy_plots(runs_dir: Path, out_dir: Path) -> list[str]:
    """Training curves and confusion matrix of each framework's ``best`` seed-0 run."""
    names = []
    for framework in FRAMEWORKS:
        runs = runs_of(runs_dir, framework, "best", 0)
        if not runs:
            continue
        for plot in ("curves", "confusion"):
            name = f"best-{framework}-{plot}.png"
            shutil.copyfile(runs[-1].path / f"{plot}.png", out_dir / name)
            names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.report", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train the runs that are missing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds for `best`")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "accuracy.md")
    args = parser.parse_args(argv)
    plan = [(preset, 0) for preset in SEED_PRESETS] + [("best", seed) for seed in args.seeds]
    if args.train:
        train_missing(args.runs_dir, plan)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = render(args.runs_dir, plan)
    plots = copy_plots(args.runs_dir, args.out.parent)
    text += "".join(f"\n![{name}]({name})\n" for name in plots)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
