"""Export trained runs: ``python -m export --framework both`` (latest full-data run of the preset).

Writes ONNX (both frameworks), a SavedModel (TensorFlow) and a state dict
(PyTorch) under ``--out``/<model>/<version>/ with a manifest, after checking
each artifact against the source model on real test images, then registers
the folder in the BentoML model store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.pipeline import DEFAULT_ARTIFACTS_DIR, ExportConfig, ExportError, export_run, find_export
from fashion.data import DataError, load_fashion_mnist
from fashion.manifest import read_manifest
from training.config import get_preset
from training.run import DEFAULT_RUNS_DIR, FRAMEWORKS, Run, full_runs, load_run


def pick_runs(args: argparse.Namespace) -> list[Run]:
    """The runs to export: ``--run`` folders, or per framework the latest full-data run of the preset as it is now
    and ``--seed`` (a run of an older version of the preset is not picked)."""
    if args.run:
        return [load_run(path) for path in args.run]
    frameworks = FRAMEWORKS if args.framework == "both" else (args.framework,)
    picked = []
    for framework in frameworks:
        runs = full_runs(args.runs_dir, framework, args.preset, get_preset(args.preset, seed=args.seed))
        if not runs:
            raise FileNotFoundError(
                f"no finished full-data {framework}/{args.preset} run of seed {args.seed} under {args.runs_dir} "
                f"(runs of an older version of the preset do not count); train one with: "
                f"python -m training --framework {framework} --preset {args.preset} --seed {args.seed}"
            )
        picked.append(runs[-1])
    return picked


def table(model_dirs: list[Path]) -> str:
    """Artifact, size, parity and accuracy, one row per artifact, from the exports' manifests."""
    lines = [f"{'model':<36} {'artifact':<11} {'size':>9} {'parity max|dp|':>15} {'top-1 agree':>12} {'test acc':>9}"]
    for model_dir in model_dirs:
        manifest = read_manifest(model_dir)
        for key, entry in manifest["artifacts"].items():
            parity = entry.get("parity")
            dp = f"{parity['max_abs_prob_diff']:.2e}" if parity else "-"
            agree = f"{parity['top1_agreement']:.4f}" if parity else "-"
            lines.append(f"{manifest['name'] + ':' + manifest['version']:<36} {key:<11} "
                         f"{entry['bytes'] / 1e6:>7.2f}MB {dp:>15} {agree:>12} {entry['test_accuracy']:>9.4f}")
    return "\n".join(lines) + "\n"


def write_store_table(path: Path) -> int:
    """The table of the latest model of each framework in the BentoML store, printed and written to ``path``."""
    import bentoml

    from fashion.backends import MODEL_NAMES

    text = table([Path(bentoml.models.get(f"{name}:latest").path) for name in MODEL_NAMES.values()])
    path.write_text(text)
    print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--framework", choices=[*FRAMEWORKS, "both"], default="both")
    parser.add_argument("--preset", default="best", help="which preset's latest run to export")
    parser.add_argument("--seed", type=int, default=0, help="which seed's run of the preset")
    parser.add_argument("--run", type=Path, action="append", help="export this run folder (repeatable)")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_ARTIFACTS_DIR, help="where model folders go")
    parser.add_argument("--opset", type=int, default=ExportConfig.opset, help="ONNX opset")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 ONNX variant")
    parser.add_argument("--no-register", action="store_true", help="do not register in the BentoML store")
    parser.add_argument("--if-missing", action="store_true", help="skip runs that were exported already")
    parser.add_argument("--data-dir", default=None, help="folder with the IDX files (default: search)")
    parser.add_argument("--table", type=Path, default=None,
                        help="export nothing: write the table of the BentoML store's latest models to this file "
                             "(results/export.txt)")
    args = parser.parse_args(argv)
    if args.table:
        return write_store_table(args.table)
    try:
        runs = pick_runs(args)
        data = load_fashion_mnist(args.data_dir)
        config = ExportConfig(opset=args.opset, quantize=not args.no_int8)
        model_dirs = []
        for run in runs:
            existing = find_export(run, args.out) if args.if_missing else None
            if existing:
                print(f"{run.path.name}: already exported to {existing}")
            model_dirs.append(existing or export_run(run, data, args.out, config))
    except (FileNotFoundError, DataError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(model_dirs), end="")
    if not args.no_register:
        from export.store import register_model

        for model_dir in model_dirs:
            print(f"registered {register_model(model_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
