"""Accuracy on real test images transformed the way product photos arrive, through the HTTP service.

``python -m benchmark.quality.inputs`` starts ``bentoml serve`` on the registered models (or uses ``--url``), uploads
every variant of the transformed suite to ``/classify`` with ``framing=dataset`` and ``framing=legacy``, and
writes ``results/inputs.json`` and ``results/inputs.md``: accuracy per variant against the 28 x 28 baseline.

Photos are made from Fashion-MNIST test images (light object on black): on a light backdrop the image is the
object's "ink" over the backdrop (``backdrop * (1 - x/255)``, a dark garment on white when the backdrop is
white); on a dark backdrop it is light cloth over it (``backdrop + (255 - backdrop) * x/255``).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark import harness
from benchmark.harness import RESULTS, command_line, model_dirs, write_results
from fashion.contract import CLASS_NAMES

WHITE, GREY, BEIGE, BLUE, DARK = (255, 255, 255), (128, 128, 128), (232, 214, 180), (70, 120, 200), (25, 25, 30)
PHOTO_SIZE = 112  # the object's pixels before margins: a 4x upscale, so margins are added at photo resolution


@dataclass(frozen=True)
class Variant:
    """One transformation: a name, what it does, and a function from a 28 x 28 image to file bytes."""

    name: str
    description: str
    make: Callable[[np.ndarray, np.random.Generator], bytes]


def _upscale(pixels: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS))


def compose(pixels: np.ndarray, backdrop: tuple[int, int, int], ink: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """An RGB photo of the object over ``backdrop``: dark ``ink`` on a light backdrop, light cloth on a dark one."""
    alpha = pixels.astype(np.float32)[..., None] / 255.0
    back = np.array(backdrop, dtype=np.float32)
    if np.mean(backdrop) > 127:
        rgb = back * (1 - alpha) + np.array(ink, dtype=np.float32) * alpha
    else:
        rgb = back + (255.0 - back) * alpha
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def place(photo: np.ndarray, height: int, width: int, top: int, left: int,
          backdrop: tuple[int, int, int]) -> np.ndarray:
    """``photo`` pasted at (top, left) on a ``height x width`` canvas of ``backdrop``."""
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = backdrop
    canvas[top:top + photo.shape[0], left:left + photo.shape[1]] = photo
    return canvas


def encode(rgb: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    """File bytes of an image array."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def framed(fill: float, backdrop=WHITE, aspect: float = 1.0, offset: bool = False, fmt: str = "PNG",
           size: int = PHOTO_SIZE, ink=(0, 0, 0), **options) -> Callable[[np.ndarray, np.random.Generator], bytes]:
    """A variant maker: the object (``size`` px) fills ``fill`` of the frame's short side; ``aspect`` = width/height.

    ``offset`` puts the object at a random place instead of the centre.
    """
    def make(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
        photo = compose(_upscale(pixels, size), backdrop, ink)
        short = round(size / fill)
        height, width = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
        if offset:
            top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        else:
            top, left = (height - size) // 2, (width - size) // 2
        return encode(place(photo, height, width, int(top), int(left), backdrop), fmt, **options)
    return make


def variants() -> list[Variant]:
    """The transformed suite."""
    def raw(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
        return encode(pixels)

    def upscale_dark(size: int):
        return lambda pixels, rng: encode(_upscale(pixels, size))

    return [
        Variant("28x28", "the test image as a 28 x 28 PNG (baseline)", raw),
        *(Variant(f"margin-{m}-white", f"{m}% margins, white backdrop", framed(1 - m / 100)) for m in (10, 30, 60)),
        Variant("margin-30-grey", "30% margins, grey (128) backdrop", framed(0.7, GREY)),
        Variant("margin-30-beige", "30% margins, beige backdrop", framed(0.7, BEIGE)),
        Variant("margin-30-blue", "30% margins, blue (70, 120, 200) backdrop", framed(0.7, BLUE)),
        Variant("margin-30-dark", "30% margins, dark backdrop, light object", framed(0.7, DARK)),
        *(Variant(f"aspect-{name}", f"frame width:height {name}, object fills the short side", framed(1.0, aspect=a))
          for name, a in (("1:2", 0.5), ("2:3", 2 / 3), ("3:2", 1.5), ("2:1", 2.0))),
        Variant("off-centre", "object at a random place in a frame twice its size", framed(0.5, offset=True)),
        *(Variant(f"object-{p}pct", f"object is {p}% of the frame side", framed(p / 100)) for p in (30, 50, 100)),
        *(Variant(f"jpeg-q{q}", f"JPEG quality {q}, 20% margins, white", framed(0.8, fmt="JPEG", quality=q))
          for q in (60, 75, 95)),
        Variant("rgb-navy", "RGB photo: a navy garment on white, 20% margins", framed(0.8, ink=(20, 30, 90))),
        *(Variant(f"upscale-{s}", f"upscaled to {s} px, light object on black (no margin)", upscale_dark(s))
          for s in (100, 300, 1000)),
        *(Variant(f"upscale-{s}-white", f"upscaled to {s} px on white, 20% margins",
                  framed(0.8, size=round(s * 0.8))) for s in (100, 1000)),
    ]


def classify_answers(client, url: str, files: list[bytes], framing: str, chunk: int = 32,
                     backend: str | None = None) -> list[dict]:
    """The answers of ``/classify`` for every file, ``chunk`` files per request (``backend``: the default)."""
    answers = []
    params = {"backend": backend} if backend else None
    for start in range(0, len(files), chunk):
        parts = [("images", (f"{i}.img", data, "application/octet-stream"))
                 for i, data in enumerate(files[start:start + chunk])]
        response = client.post(f"{url}/classify", files=parts, data={"framing": framing}, params=params,
                               timeout=300)
        response.raise_for_status()
        answers.extend(response.json())
    return answers


def classify(client, url: str, files: list[bytes], framing: str) -> list[int]:
    """Class ids from ``/classify`` for every file."""
    return [answer["class_id"] for answer in classify_answers(client, url, files, framing)]


def run_suite(url: str, images: np.ndarray, labels: np.ndarray, seed: int) -> list[dict]:
    """Accuracy per variant and framing policy."""
    import httpx
    from tqdm import tqdm

    rows = []
    with httpx.Client() as client:
        for variant in tqdm(variants(), desc="variants"):
            rng = np.random.default_rng(seed)
            files = [variant.make(image, rng) for image in images]
            row = {"variant": variant.name, "description": variant.description, "n": len(files),
                   "mean_bytes": int(np.mean([len(f) for f in files]))}
            for framing in ("legacy", "dataset"):
                row[framing] = float(np.mean(np.array(classify(client, url, files, framing)) == labels))
            rows.append(row)
    return rows


def model_tags(model_dirs: list[Path]) -> list[str]:
    """``name:version`` of each exported model folder."""
    from fashion.manifest import read_manifest

    return [f"{m['name']}:{m['version']}" for m in map(read_manifest, model_dirs)]


def write_report(rows: list[dict], meta: dict, out: Path) -> None:
    """``inputs.json`` and ``inputs.md``."""
    baseline = rows[0]["dataset"]
    lines = [
        "# Accuracy on transformed test images, through the HTTP service", "",
        f"Written by `{meta['command']}`. n = {meta['n']} test images per variant (the first {meta['n']} of the "
        f"10,000), each uploaded to `/classify` ({meta['backend']}) with `framing=legacy` and `framing=dataset`. "
        f"Baseline: the 28 x 28 images, {baseline:.4f}. Within: |dataset - baseline| <= 1.5 points. "
        f"Served by the default backend of: {', '.join(meta.get('models') or ['the service at --url'])}.", "",
        "| variant | what | legacy | dataset | dataset - baseline (points) | within 1.5 |",
        "| --- | --- | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        delta = 100 * (r["dataset"] - baseline)
        lines.append(f"| {r['variant']} | {r['description']} | {r['legacy']:.4f} | {r['dataset']:.4f} | "
                     f"{delta:+.1f} | {'yes' if abs(delta) <= 1.5 else 'NO'} |")
    write_results("inputs", "\n".join(lines), {**meta, "baseline": baseline, "rows": rows}, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.quality.inputs", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--limit", type=int, default=1000, help="test images per variant")
    parser.add_argument("--seed", type=int, default=0, help="placement of the off-centre variant")
    parser.add_argument("--url", default=None, help="a running service; default: start one on the store's models")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    from fashion.data import load_fashion_mnist

    data = load_fashion_mnist(args.data_dir)
    images, labels = data.test_images[:args.limit], data.test_labels[:args.limit]
    meta = {"command": command_line("benchmark.quality.inputs", argv), "n": len(labels), "backend": "default backend",
            "classes": list(CLASS_NAMES), "models": None if args.url else model_tags(list(model_dirs().values()))}
    if args.url:
        rows = run_suite(args.url, images, labels, args.seed)
    else:
        with harness.served() as server:
            rows = run_suite(server.url, images, labels, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(rows, meta, args.out)
    print((args.out / "inputs.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
