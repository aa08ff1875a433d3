"""Calibration of every exported model: ECE (15 bins) and reliability diagrams, before and after temperature scaling.

``python -m benchmark.quality.calibration`` runs each exported model's ONNX artifact (the store's latest, or
``--model-dir``) on the 10,000 test images, applies the temperature its manifest recorded (fitted on the validation
split at export, see fashion.calibration), then measures the same through the HTTP service: the 10,000 images
uploaded as PNG to ``/classify`` of every backend (a service it starts on the store's models, or ``--url``), ECE from
the answers' ``confidence``. Writes ``results/calibration.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmark import harness
from benchmark.harness import RESULTS, command_line, model_dirs, write_results


def measure(model_dir: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """ECE, NLL, accuracy and reliability bins before and after calibration for one exported model."""
    from fashion.backends import load_artifact
    from fashion.calibration import ECE_BINS, expected_calibration_error, reliability_bins
    from fashion.contract import preprocess, softmax, temperature_of
    from fashion.manifest import read_manifest

    manifest = read_manifest(model_dir)
    logits = load_artifact(model_dir, "onnx", "onnx", device="cpu").predict(preprocess(images))
    temperature = temperature_of(manifest)
    row = {"model": f"{manifest['name']}:{manifest['version']}", "temperature": temperature, "bins": ECE_BINS,
           "accuracy": float((logits.argmax(1) == labels).mean())}
    for when, t in (("before", 1.0), ("after", temperature)):
        probs = softmax(logits, t)
        row[f"ece_{when}"] = expected_calibration_error(probs, labels)
        row[f"nll_{when}"] = float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())
        row[f"bins_{when}"] = reliability_bins(probs, labels)
    return row


def measure_served(url: str, images: np.ndarray, labels: np.ndarray, backends: list[str]) -> list[dict]:
    """Per backend, accuracy and ECE of the service's answers to the test images uploaded as PNG files."""
    import httpx

    from benchmark.quality.inputs import classify_answers, encode
    from fashion.calibration import ECE_BINS, confidence_bins, ece_of_bins

    files = [encode(i) for i in images]
    rows = []
    with httpx.Client() as client:
        for backend in backends:
            answers = classify_answers(client, url, files, "dataset", chunk=100, backend=backend)
            correct = np.array([a["class_id"] for a in answers]) == labels
            bins = confidence_bins(np.array([a["confidence"] for a in answers]), correct, ECE_BINS)
            rows.append({"backend": backend, "model_version": answers[0]["model_version"],
                         "accuracy": float(correct.mean()), "ece": ece_of_bins(bins)})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Reliability diagrams: accuracy against confidence per bin, one panel per model, before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4.6), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        for when, marker in (("before", "o"), ("after", "s")):
            bins = [b for b in row[f"bins_{when}"] if b["count"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker=marker,
                    label=f"{when} (ECE {row[f'ece_{when}']:.4f})")
        ax.set(title=f"{row['model']}\nT = {row['temperature']:.3f}", xlabel="confidence", ylabel="accuracy",
               xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], served: list[dict], command: str, out: Path) -> None:
    """``calibration.json``, ``calibration.md`` and ``calibration.png``."""
    plot(rows, out / "calibration.png")
    lines = ["# Calibration: temperature scaling fitted on the validation split", "",
             f"Written by `{command}`. 10,000 test images, each model's ONNX artifact; ECE with "
             f"{rows[0]['bins']} equal-width bins. Reliability diagrams: calibration.png.", "",
             "| model | T | test accuracy | ECE before | ECE after | NLL before | NLL after |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['temperature']:.4f} | {r['accuracy']:.4f} | {r['ece_before']:.4f} | "
              f"{r['ece_after']:.4f} | {r['nll_before']:.4f} | {r['nll_after']:.4f} |" for r in rows]
    lines += ["", "## Through the HTTP service", "",
              "The 10,000 test images uploaded as PNG files to `/classify?backend=...`; ECE of the answers' "
              "`confidence` (15 bins).", "",
              "| backend | model version | accuracy | ECE |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['backend']} | {r['model_version']} | {r['accuracy']:.4f} | {r['ece']:.4f} |" for r in served]
    write_results("calibration", "\n".join(lines) + "\n\n![reliability diagrams](calibration.png)",
                  {"command": command, "rows": rows, "served": served}, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.quality.calibration", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-dir", type=Path, action="append", default=None,
                        help="exported model folder (default: the store's latest fashion-mlp-torch and -tf)")
    parser.add_argument("--url", default=None, help="a running service; default: start one on the store's models")
    parser.add_argument("--backends", default="onnx-torch,onnx-tf,torch,savedmodel",
                        help="backends to measure through the service (comma-separated)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from fashion.data import load_fashion_mnist

    data = load_fashion_mnist()
    rows = [measure(d, data.test_images, data.test_labels) for d in args.model_dir or list(model_dirs().values())]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.url:
        served = measure_served(args.url, data.test_images, data.test_labels, backends)
    else:
        with harness.served() as server:
            served = measure_served(server.url, data.test_images, data.test_labels, backends)
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(rows, served, command_line("benchmark.quality.calibration", argv), args.out)
    print((args.out / "calibration.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
