"""What the "not clothing" score costs per image, in process, beside the model call it rides with.

The service scores every batch the model runs, in the model's thread (service.registry.ModelRegistry.run_batch).
This measures :meth:`fashion.ood.OodDetector.score` and the ONNX Runtime model call of the same images at each batch
size, on real test images, and writes ``results/ood-cost-<machine>.{md,json}``::

    python -m benchmark.ood_cost            # the store's latest onnx-torch model (make ood-cost)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.report import machine_name
from benchmark.timing import FULL, QUICK, Budget, time_calls
from fashion.env import environment_stamp

BATCH_SIZES = (1, 16, 64, 256, 1024)
TARGET_US = 5.0  # the per-image budget of the score inside a batch (docs/serving.md)


def measure(classifier: Any, images: np.ndarray, batch_sizes: tuple[int, ...], budget: Budget) -> list[dict]:
    """Per batch size: median seconds per call of the score and of the model, and both per image."""
    from fashion.contract import preprocess

    rows = []
    for size in batch_sizes:
        pixels = images[:size]
        logits = classifier.predictor.predict(preprocess(pixels))
        score = time_calls(lambda p=pixels, lg=logits: classifier.detector.score(lg, p), budget)
        model = time_calls(lambda p=pixels: classifier.predictor.predict(preprocess(p)), budget)
        rows.append({"batch": size, "score_s": score["median_s"], "score_p99_s": score["p99_s"],
                     "model_s": model["median_s"], "score_us_per_image": 1e6 * score["median_s"] / size,
                     "model_us_per_image": 1e6 * model["median_s"] / size})
    return rows


def render(results: dict[str, Any]) -> str:
    """The Markdown report."""
    lines = ["# The \"not clothing\" score's cost per image, in process", "",
             f"Written by `python -m benchmark.ood_cost` on {results['env']['cpu']} ({results['env']['cores']} "
             f"cores); model {results['model']}, real test images, medians of repeated calls. The score is "
             "computed once per batch in the model's thread; budget: "
             f"{TARGET_US:g} µs per image in a batch.", "",
             "| batch | score µs/call | score µs/image | model µs/call | model µs/image | score / model |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in results["rows"]:
        lines.append(f"| {row['batch']} | {1e6 * row['score_s']:.1f} | {row['score_us_per_image']:.2f} | "
                     f"{1e6 * row['model_s']:.1f} | {row['model_us_per_image']:.2f} | "
                     f"{row['score_s'] / row['model_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="exported folder or BentoML tag (default: the store's latest)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the report (default: results)")
    parser.add_argument("--quick", action="store_true", help="short timing budget (CI smoke test)")
    args = parser.parse_args(argv)

    from clients.local import LocalClassifier
    from fashion.data import find_data_dir, load_fashion_mnist

    classifier = LocalClassifier.open(args.model, "onnx-torch", threads=1)
    if classifier.detector is None:
        parser.error(f"model {classifier.version} was exported without a detector; re-export it")
    images = load_fashion_mnist(find_data_dir(download=False)).test_images
    env = environment_stamp()
    results = {"env": env, "model": f"onnx-torch {classifier.version}",
               "rows": measure(classifier, images, BATCH_SIZES, QUICK if args.quick else FULL)}
    stem = f"ood-cost-{machine_name(env, None)}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
