"""Robustness to corrupted, oddly delivered and casually captured images, through the HTTP service.

``python -m benchmark.quality.robustness`` starts ``bentoml serve`` on the registered models (or uses ``--url``),
uploads the first ``--limit`` test images in every case below to ``/classify`` of each backend in ``--backends`` (by
default both frameworks' exported ``best`` models, served through ONNX Runtime), and records accuracy and the
share flagged "not clothing" (``in_distribution`` false) per case:

* ``corruption``: the ten MNIST-C families of :mod:`benchmark.corruptions` at five severities, as 28 x 28 PNGs;
* ``delivery``: the image as a product photo (dark garment on white, 20% margins) delivered the way phones and
  shops send it: a JPEG stored turned with each EXIF orientation, a cut-out on a transparent background whose
  hidden colour varies, a 16-bit PNG, palette PNGs (one with a transparent index), a CMYK JPEG;
* ``capture``: the photo tilted 8 or 15 degrees (random side), or lit unevenly (one side darker by 15 or 30%).

Each run is stored under its ``--label`` in ``results/robustness.json``; ``results/robustness.md`` and
``results/robustness.png`` are written from every label present, so a run of the service as it was (``--label
before --url`` a server of the older code) and one as it is sit side by side.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark import harness
from benchmark.harness import RESULTS, command_line
from benchmark.quality.corruptions import FAMILIES, severities
from benchmark.quality.inputs import (
    WHITE,
    classify_answers,
    compose,
    encode,
    place,
)

PHOTO_OBJECT = 112  # the object's side in the photo, px (a 4x upscale)
PHOTO_FILL = 0.8  # the object fills 80% of the frame: 20% margins
EXIF_JPEG_QUALITY = 95
HIDDEN_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "red": (220, 20, 30), "noise": None}
# How a camera stores the picture for each EXIF orientation: the inverse of the turn a viewer applies.
STORED_TURN = {1: None, 2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_90",
               7: "TRANSVERSE", 8: "ROTATE_270"}
BACKENDS = ("onnx-torch", "onnx-tf")


@dataclass(frozen=True)
class Case:
    """One way of sending the test images: a group, a family, a severity (or 0), and a maker of file bytes."""

    group: str
    family: str
    severity: int
    description: str
    make: Callable[[np.ndarray, np.random.Generator], bytes]


def photo(pixels: np.ndarray) -> np.ndarray:
    """``uint8[H, W, 3]``: the test image as a product photo, a dark garment on white with 20% margins."""
    from PIL import Image

    big = np.asarray(Image.fromarray(pixels).resize((PHOTO_OBJECT, PHOTO_OBJECT), Image.Resampling.LANCZOS))
    side = round(PHOTO_OBJECT / PHOTO_FILL)
    offset = (side - PHOTO_OBJECT) // 2
    return place(compose(big, WHITE), side, side, offset, offset, WHITE)


def save(image, fmt: str, **options) -> bytes:
    """File bytes of a Pillow image."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def exif_oriented(orientation: int) -> Callable[[np.ndarray, np.random.Generator], bytes]:
    def make(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
        from PIL import Image

        image = Image.fromarray(photo(pixels))
        if STORED_TURN[orientation]:
            image = image.transpose(Image.Transpose[STORED_TURN[orientation]])
        exif = Image.Exif()
        exif[0x0112] = orientation
        return save(image, "JPEG", quality=EXIF_JPEG_QUALITY, exif=exif.tobytes())
    return make


def cut_out(hidden: tuple[int, int, int] | None) -> Callable[[np.ndarray, np.random.Generator], bytes]:
    """The photo's garment opaque, its backdrop transparent; the transparent pixels hold ``hidden`` (or noise)."""
    def make(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
        from PIL import Image

        rgb = photo(pixels)
        opaque = (rgb < 255).any(axis=2)
        rgb[~opaque] = rng.integers(0, 256, (int((~opaque).sum()), 3)) if hidden is None else hidden
        return save(Image.fromarray(np.dstack([rgb, np.where(opaque, 255, 0).astype(np.uint8)])), "PNG")
    return make


def sixteen_bit(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
    from PIL import Image

    gray = np.asarray(Image.fromarray(photo(pixels)).convert("L")).astype(np.uint16) * 257
    return save(Image.fromarray(gray), "PNG")


def palette(transparent: bool) -> Callable[[np.ndarray, np.random.Generator], bytes]:
    def make(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
        from PIL import Image

        image = Image.fromarray(photo(pixels)).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        if not transparent:
            return save(image, "PNG")
        return save(image, "GIF", transparency=image.getpixel((0, 0)))  # the backdrop's index
    return make


def cmyk(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
    from PIL import Image

    return save(Image.fromarray(photo(pixels)).convert("CMYK"), "JPEG", quality=EXIF_JPEG_QUALITY)


def tilted(degrees: float) -> Callable[[np.ndarray, np.random.Generator], bytes]:
    def make(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
        from PIL import Image

        turn = degrees * float(rng.choice([-1.0, 1.0]))
        image = Image.fromarray(photo(pixels)).rotate(turn, Image.Resampling.BICUBIC, expand=True, fillcolor=WHITE)
        return encode(np.asarray(image))
    return make


def uneven_light(darkest: float) -> Callable[[np.ndarray, np.random.Generator], bytes]:
    """Light falling linearly from full on one side (chosen at random) to ``darkest`` on the opposite one."""
    def make(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
        rgb = photo(pixels).astype(np.float64)
        ramp = np.linspace(1.0, darkest, rgb.shape[0])[::int(rng.choice([-1, 1]))]
        light = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
        return encode(np.round(rgb * light[..., None]).astype(np.uint8))
    return make


def corrupted(family: str, severity: int) -> Callable[[np.ndarray, np.random.Generator], bytes]:
    return lambda pixels, rng: encode(FAMILIES[family](pixels, severity, rng))


def cases() -> list[Case]:
    """Every case of the benchmark, the 28 x 28 baseline first."""
    return [
        Case("baseline", "28x28", 0, "the test image as a 28 x 28 PNG", lambda pixels, rng: encode(pixels)),
        Case("delivery", "photo-png", 0, "a product photo (dark on white, 20% margins), RGB PNG",
             lambda pixels, rng: encode(photo(pixels))),
        *(Case("delivery", f"exif-{o}", 0, f"the photo as a JPEG stored turned, EXIF orientation {o}",
               exif_oriented(o)) for o in STORED_TURN),
        *(Case("delivery", f"transparent-{name}", 0, f"the garment cut out, transparent pixels hold {name}",
               cut_out(colour)) for name, colour in HIDDEN_COLOURS.items()),
        Case("delivery", "png-16bit", 0, "the photo as a 16-bit grayscale PNG", sixteen_bit),
        Case("delivery", "palette", 0, "the photo as a palette PNG (256 colours)", palette(False)),
        Case("delivery", "palette-transparent", 0, "a palette GIF whose backdrop index is transparent",
             palette(True)),
        Case("delivery", "cmyk", 0, "the photo as a CMYK JPEG", cmyk),
        *(Case("capture", f"tilt-{d}", 0, f"the photo tilted {d} degrees (random side)", tilted(d)) for d in (8, 15)),
        *(Case("capture", f"light-{p}", 0, f"light falling off by {p}% across the photo (random side)",
               uneven_light(1 - p / 100)) for p in (15, 30)),
        *(Case("corruption", family, s, f"MNIST-C {family}, severity {s}", corrupted(family, s))
          for family in FAMILIES for s in severities(family)),
    ]


def served_models(url: str, backends: tuple[str, ...]) -> list[str]:
    """``backend: name:version`` of the model each asked backend serves, from the service's ``/model_info``."""
    import httpx

    info = httpx.post(f"{url}/model_info", json={}, timeout=60).json()
    return [f"{b}: {info['backends'].get(b, {}).get('model')}" for b in backends]


def run_cases(url: str, images: np.ndarray, labels: np.ndarray, backends: tuple[str, ...], seed: int,
              only: str | None = None) -> list[dict]:
    """Accuracy and "not clothing" share per case and backend."""
    import httpx
    from tqdm import tqdm

    rows = []
    chosen = [c for c in cases() if only is None or c.group in ("baseline", only)]
    with httpx.Client() as client:
        for case in tqdm(chosen, desc="cases"):
            rng = np.random.default_rng(seed)
            files = [case.make(image, rng) for image in images]
            row = {"group": case.group, "family": case.family, "severity": case.severity,
                   "description": case.description, "n": len(files)}
            for backend in backends:
                answers = classify_answers(client, url, files, "dataset", backend=backend)
                row[backend] = {
                    "accuracy": float(np.mean([a["class_id"] for a in answers] == labels)),
                    "not_clothing": float(np.mean([a.get("in_distribution") is False for a in answers])),
                }
            rows.append(row)
    return rows


def _delta(row: dict, base: dict, backend: str, key: str) -> float:
    return 100 * (row[backend][key] - base[backend][key])


def summary(rows: list[dict], backends: list[str]) -> dict[str, dict]:
    """Per backend, the figures the acceptance bounds speak of (points against the 28 x 28 baseline)."""
    base = rows[0]
    out = {}
    for backend in backends:
        delivery = [r for r in rows if r["group"] == "delivery"]
        at3 = [r for r in rows if r["group"] == "corruption" and r["severity"] == 3]
        drops = {r["family"]: -_delta(r, base, backend, "accuracy") for r in at3}
        tilt = [r for r in rows if r["family"].startswith("tilt-")]
        out[backend] = {
            "baseline": base[backend]["accuracy"],
            "baseline_not_clothing": base[backend]["not_clothing"],
            "delivery_worst_drop": max((-_delta(r, base, backend, "accuracy") for r in delivery), default=None),
            "delivery_worst_not_clothing_rise": max((_delta(r, base, backend, "not_clothing") for r in delivery),
                                                    default=None),
            "tilt_worst_drop": max((-_delta(r, base, backend, "accuracy") for r in tilt), default=None),
            "light_30_drop": next((-_delta(r, base, backend, "accuracy") for r in rows
                                   if r["family"] == "light-30"), None),
            "severity_3_mean_drop": float(np.mean(list(drops.values()))) if drops else None,
            "severity_3_worst": max(drops.items(), key=lambda kv: kv[1]) if drops else None,
        }
    return out


def _fmt(value, spec: str = "+.1f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(results: dict) -> str:
    """The report: the acceptance summary, then every case, for every stored run."""
    runs = results["runs"]
    lines = ["# Robustness: corrupted, oddly delivered and casually captured images, through `/classify`", "",
             "Written by `python -m benchmark.quality.robustness` (`make robustness`; see "
             "benchmark/quality/robustness.py for every case). Each run names its command, code and models below. "
             "Points are accuracy differences against the same run's 28 x 28 baseline; \"not clothing\" is the "
             "share of answers with `in_distribution` false.", ""]
    for label, run in runs.items():
        lines += [f"- **{label}**: `{run['command']}`; code {run['code']}; n = {run['n']}; models: "
                  f"{', '.join(run['models'] or ['the service at --url'])}"]
    lines += ["", "## Summary (acceptance bounds in brackets)", "",
              "| run | backend | baseline | delivery worst drop [<= 1.0] | delivery worst \"not clothing\" rise "
              "[<= 1.0] | tilt worst drop [<= 5] | light 30% drop [<= 3] | severity 3 mean drop [<= 8] | "
              "severity 3 worst family, drop [<= 20] |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label, run in runs.items():
        for backend, s in summary(run["rows"], run["backends"]).items():
            worst = s["severity_3_worst"]
            drops = [s[k] for k in ("delivery_worst_drop", "delivery_worst_not_clothing_rise", "tilt_worst_drop",
                                    "light_30_drop", "severity_3_mean_drop")]
            lines.append(f"| {label} | {backend} | {s['baseline']:.4f} | "
                         + " | ".join(_fmt(d, ".1f") for d in drops)
                         + f" | {'n/a' if worst is None else f'{worst[0]} {worst[1]:.1f}'} |")
    for group in ("delivery", "capture", "corruption"):
        lines += ["", f"## {group.capitalize()}", "",
                  "| case | severity | " + " | ".join(f"{label} {b} accuracy (points) | {label} {b} not clothing"
                                                     for label, run in runs.items() for b in run["backends"]) + " |",
                  "| --- | ---: |" + " ---: | ---: |" * sum(len(run["backends"]) for run in runs.values())]
        keys = [(r["family"], r["severity"]) for r in next(iter(runs.values()))["rows"]
                if r["group"] in (group, "baseline")]
        for family, severity in keys:
            cells = []
            for run in runs.values():
                base = run["rows"][0]
                row = next((r for r in run["rows"] if (r["family"], r["severity"]) == (family, severity)), None)
                for b in run["backends"]:
                    cells += ["n/a", "n/a"] if row is None else [
                        f"{row[b]['accuracy']:.4f} ({_delta(row, base, b, 'accuracy'):+.1f})",
                        f"{100 * row[b]['not_clothing']:.1f}%"]
            lines.append(f"| {family} | {severity or ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Accuracy against severity, one panel per corruption family, one line per run and backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(16, 6.5), sharey=True)
    for ax, family in zip(axes.ravel(), FAMILIES, strict=True):
        for label, run in results["runs"].items():
            for backend in run["backends"]:
                points = [(0, run["rows"][0][backend]["accuracy"])] + [
                    (r["severity"], r[backend]["accuracy"]) for r in run["rows"]
                    if r["group"] == "corruption" and r["family"] == family]
                xs, ys = zip(*points, strict=True)
                style = "--" if label.startswith("before") else "-"
                ax.plot(xs, ys, marker="o", linestyle=style, label=f"{label} {backend}")
        ax.set_title(family.replace("_", " "))
        ax.set_xticks(range(6))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    for ax in axes[-1]:
        ax.set_xlabel("severity (0 = clean)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Accuracy against corruption severity, through /classify (results/robustness.json)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def code_version() -> str:
    """The git commit of this checkout (``unknown`` outside git)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=harness.REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def store_run(run: dict, label: str, out: Path) -> dict:
    """Store ``run`` under ``label`` in ``robustness.json`` (other labels kept), then rewrite the .md and .png."""
    path = out / "robustness.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    results["runs"][label] = run
    results["runs"] = dict(sorted(results["runs"].items(), key=lambda kv: not kv[0].startswith("before")))
    harness.write_results("robustness", markdown(results), results, out)
    plot(results, out / "robustness.png")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.quality.robustness", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--limit", type=int, default=1000, help="test images per case")
    parser.add_argument("--seed", type=int, default=0, help="corruption noise, tilt sides, hidden colours")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), help="backends asked, one answer each")
    parser.add_argument("--label", default="after", help="the run's name in the results ('before': older code)")
    parser.add_argument("--code", default=None, help="the code the service runs (default: this checkout's commit)")
    parser.add_argument("--only", choices=("delivery", "capture", "corruption"), default=None,
                        help="one group of cases (with the baseline): a quick look")
    parser.add_argument("--report-only", action="store_true",
                        help="instead: rewrite robustness.md and .png from the stored robustness.json")
    parser.add_argument("--url", default=None, help="a running service; default: start one on the store's models")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads((args.out / "robustness.json").read_text())
        harness.write_results("robustness", markdown(results), folder=args.out)
        plot(results, args.out / "robustness.png")
        return 0
    from fashion.data import load_fashion_mnist

    data = load_fashion_mnist(args.data_dir)
    images, labels = data.test_images[:args.limit], data.test_labels[:args.limit]
    backends = tuple(args.backends)
    if args.url:
        models, rows = served_models(args.url, backends), run_cases(args.url, images, labels, backends, args.seed,
                                                                    args.only)
    else:
        with harness.served() as server:
            models = served_models(server.url, backends)
            rows = run_cases(server.url, images, labels, backends, args.seed, args.only)
    run = {"command": command_line("benchmark.quality.robustness", argv), "code": args.code or code_version(),
           "n": len(labels), "seed": args.seed, "backends": list(backends), "models": models, "rows": rows}
    results = store_run(run, args.label, args.out)
    print(markdown({"runs": {args.label: results["runs"][args.label]}}).split("## Delivery")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
