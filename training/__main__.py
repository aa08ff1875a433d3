"""Train the MLP: ``python -m training --framework both --preset best``.

Each run writes one folder under ``--out``/<framework>/ with weights, config,
history, test metrics and plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fashion.data import DataError, load_fashion_mnist
from training.config import ConfigError, get_preset
from training.run import DEFAULT_RUNS_DIR, FRAMEWORKS, full_runs, train_run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--framework", choices=[*FRAMEWORKS, "both"], default="both", help="which framework(s)")
    parser.add_argument("--preset", default="best",
                        help="preset name (best, seed-adam, seed-sgd, seed-rmsprop) or a preset .json file")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    parser.add_argument("--limit", type=int, default=None, help="train on only N training images (smoke tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initial weights, shuffling, dropout")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    parser.add_argument("--out", type=Path, default=DEFAULT_RUNS_DIR, help="folder for run folders")
    parser.add_argument("--data-dir", default=None, help="folder with the IDX files (default: search)")
    parser.add_argument("--if-missing", action="store_true",
                        help="skip a framework that already has a finished full-data run of this preset")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = get_preset(args.preset, epochs=args.epochs, batch_size=args.batch_size, limit=args.limit,
                            seed=args.seed)
        data = load_fashion_mnist(args.data_dir)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preset = Path(args.preset).stem if args.preset.endswith(".json") else args.preset
    frameworks = FRAMEWORKS if args.framework == "both" else (args.framework,)
    for framework in frameworks:
        if args.if_missing:
            done = full_runs(args.out, framework, preset, config)
            if done:
                print(f"{framework}/{preset}: trained run exists ({done[-1].path}), skipping")
                continue
        run = train_run(framework, preset, config, out=args.out, device=args.device, data=data,
                        progress=not args.quiet)
        info = run.info
        print(
            f"{framework}/{preset} seed {config.seed}: test accuracy {info['test_accuracy']:.4f}, "
            f"val accuracy {info['val_accuracy']:.4f} (epoch {info['chosen_epoch']}/{info['epochs_run']}), "
            f"{info['train_seconds']:.0f}s on {info['device']} -> {run.path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
