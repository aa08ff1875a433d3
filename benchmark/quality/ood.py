"""How well the "not clothing" score separates Fashion-MNIST from images that are not clothing.

``python -m benchmark.quality.ood`` builds out-of-distribution sets from images that ship inside packages (nothing
made up here): scikit-learn's handwritten digits (``load_digits``, 8 x 8, upscaled to 28 x 28) and crops of
scikit-image's bundled pictures (``skimage.data``, those that need no download), plus sanity cases (blank,
constant, noise, text renderings). Every image is uploaded as a PNG to ``/classify`` of a running service
(``--url``, or one started on the store's models), exactly as a user's file would be, and the answers'
``ood_score`` are compared with those of the real test images. It also compares candidate methods in process on the
same decoded pixels (maximum softmax probability, energy, the served combination), which is how the method was
chosen.
Writes ``results/ood.json`` and ``results/ood.md``: AUROC and FPR at the served threshold (95% TPR on validation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmark import harness
from benchmark.harness import RESULTS, command_line, model_dirs, write_results
from benchmark.quality.inputs import classify_answers, encode, model_tags

SKIMAGE_PICTURES = ("astronaut", "brick", "camera", "cat", "checkerboard", "clock", "coffee", "coins", "colorwheel",
                    "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms",
                    "moon", "page", "retina", "rocket", "text", "cell", "chelsea")


def digits() -> list[bytes]:
    """scikit-learn's 1,797 handwritten digits (0-16 levels), scaled to 0-255 and upscaled to 28 x 28."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = (load_digits().images * (255 / 16)).round().astype(np.uint8)
    return [encode(np.asarray(Image.fromarray(i).resize((28, 28), Image.Resampling.BILINEAR))) for i in images]


def skimage_crops(rng: np.random.Generator, per_picture: int = 20) -> list[bytes]:
    """Random square crops (15-60% of the short side) of scikit-image's bundled pictures."""
    import skimage.data

    crops = []
    for name in SKIMAGE_PICTURES:
        picture = np.asarray(getattr(skimage.data, name)())
        if picture.dtype == bool:
            picture = picture.astype(np.uint8) * 255
        if picture.ndim == 3 and picture.shape[2] == 4:
            picture = picture[..., :3]
        short = min(picture.shape[:2])
        for _ in range(per_picture):
            side = int(rng.integers(short * 0.15, short * 0.6))
            top, left = (int(rng.integers(0, picture.shape[k] - side + 1)) for k in (0, 1))
            crops.append(encode(np.ascontiguousarray(picture[top:top + side, left:left + side]).astype(np.uint8)))
    return crops


def sanity(rng: np.random.Generator) -> dict[str, list[bytes]]:
    """Blank, constant, noise and text images."""
    from PIL import Image, ImageDraw

    words = ["invoice", "hello", "404", "SALE", "lorem ipsum", "fashion", "2026", "OK"]
    texts = []
    for i in range(40):
        image = Image.new("L", (112, 112), 255)
        ImageDraw.Draw(image).text((8, 40), words[i % len(words)], fill=0, font_size=int(rng.integers(14, 30)))
        texts.append(encode(np.asarray(image)))
    return {
        "blank": [encode(np.zeros((28, 28), np.uint8)), encode(np.full((1, 1), 128, np.uint8))],
        "constant": [encode(np.full((int(rng.integers(1, 200)),) * 2, v, np.uint8)) for v in rng.integers(0, 256, 40)],
        "noise": [encode(rng.integers(0, 256, (s, s), dtype=np.uint8)) for s in rng.integers(28, 200, 40)]
        + [encode(np.clip(rng.normal(128, 40, (28, 28)), 0, 255).astype(np.uint8)) for _ in range(40)],
        "text": texts,
    }


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that a random in-distribution image scores above a random out-of-distribution one (ties: 1/2)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(inside)), np.zeros(len(outside))], np.r_[inside, outside]))


def served_scores(url: str, files: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """``ood_score`` and ``in_distribution`` from the service for each file."""
    import httpx

    with httpx.Client() as client:
        answers = classify_answers(client, url, files, "dataset")
    return (np.array([a["ood_score"] for a in answers]), np.array([a["in_distribution"] for a in answers]))


def compare_methods(model_dir: Path, sets: dict[str, list[bytes]], test_files: list[bytes]) -> list[dict]:
    """In process, on the same decoded pixels: AUROC per set of maximum softmax probability, each view the served
    score combines (fashion.ood), and the served score itself."""
    from fashion.backends import load_artifact
    from fashion.contract import preprocess, softmax, temperature_of
    from fashion.imaging import decode_image
    from fashion.manifest import read_manifest, verify_artifact
    from fashion.ood import load_detector

    manifest = read_manifest(model_dir)
    predictor = load_artifact(model_dir, "onnx", "onnx", device="cpu")
    detector = load_detector(verify_artifact(model_dir, manifest["ood"]))
    temperature = temperature_of(manifest)

    def methods(files: list[bytes]) -> dict[str, np.ndarray]:
        pixels = np.stack([decode_image(f) for f in files])
        logits = predictor.predict(preprocess(pixels))
        return {"max softmax probability": softmax(logits, temperature).max(axis=1),
                **{name.replace("_", " "): v for name, v in detector.views(logits, pixels).items()},
                "served (combined)": detector.score(logits, pixels)}

    inside = methods(test_files)
    rows = []
    for name, files in sets.items():
        outside = methods(files)
        rows.append({"model": f"{manifest['name']}:{manifest['version']}", "set": name,
                     **{method: auroc(inside[method], outside[method]) for method in inside}})
    return rows


def evaluate(url: str, sets: dict[str, list[bytes]], test_files: list[bytes]) -> tuple[list[dict], float]:
    """Served AUROC and FPR per set, and the TPR on the test images."""
    inside, inside_flags = served_scores(url, test_files)
    rows = []
    for name, files in sets.items():
        outside, flags = served_scores(url, files)
        rows.append({"set": name, "n": len(files), "auroc": auroc(inside, outside),
                     "fpr_at_threshold": float(flags.mean())})
    return rows, float(inside_flags.mean())


def write_report(meta: dict, served: list[dict], tpr: float, methods: list[dict], out: Path) -> None:
    """``ood.json`` and ``ood.md``."""
    lines = ["# \"Not clothing\": out-of-distribution detection, through the HTTP service", "",
             f"Written by `{meta['command']}`. In-distribution: the first {meta['n_test']} test images as PNG "
             f"uploads; TPR at the served threshold: **{tpr:.4f}**. FPR: share of the set the service calls "
             "in-distribution (`in_distribution: true`) at that threshold (chosen for 95.5% TPR on validation). "
             f"Served by the default backend of: {', '.join(meta.get('models') or ['the service at --url'])}.", "",
             "| OOD set | n | AUROC | FPR at threshold |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['set']} | {r['n']} | {r['auroc']:.4f} | {r['fpr_at_threshold']:.3f} |" for r in served]
    names = [k for k in methods[0] if k not in ("model", "set")]
    lines += ["", "## How the method was chosen (in process, same pixels, AUROC)", "",
              "| model | set | " + " | ".join(names) + " |", "| --- | --- |" + " ---: |" * len(names)]
    lines += [f"| {r['model']} | {r['set']} | " + " | ".join(f"{r[n]:.4f}" for n in names) + " |" for r in methods]
    write_results("ood", "\n".join(lines), {**meta, "test_tpr": tpr, "served": served, "methods": methods}, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.quality.ood", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--limit", type=int, default=10000, help="in-distribution test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", default=None, help="a running service; default: start one on the store's models")
    parser.add_argument("--model-dir", type=Path, action="append", default=None,
                        help="exported model folder(s) for the in-process method comparison "
                             "(default: the store's latest fashion-mlp-torch and fashion-mlp-tf)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from fashion.data import load_fashion_mnist

    rng = np.random.default_rng(args.seed)
    test_files = [encode(i) for i in load_fashion_mnist().test_images[:args.limit]]
    sanity_sets = sanity(rng)
    sets = {"digits (sklearn)": digits(), "skimage.data crops": skimage_crops(rng), **sanity_sets,
            "all sanity cases": [f for files in sanity_sets.values() for f in files]}
    chosen = args.model_dir or list(model_dirs().values())
    methods = [row for model_dir in chosen for row in compare_methods(model_dir, sets, test_files)]
    meta = {"command": command_line("benchmark.quality.ood", argv), "n_test": len(test_files), "seed": args.seed,
            "models": None if args.url else model_tags(list(model_dirs().values()))}
    if args.url:
        served, tpr = evaluate(args.url, sets, test_files)
    else:
        with harness.served() as server:
            served, tpr = evaluate(server.url, sets, test_files)
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(meta, served, tpr, methods, args.out)
    print((args.out / "ood.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
