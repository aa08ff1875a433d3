"""Tilt: correct it (deskew) or learn it (train on turned images)? Both measured on the same models and images.

``python -m benchmark.quality.tilt_choice`` trains each framework once per arm through the one shared loader
(``training.loop.fit`` on ``training.run.make_train_data``), from the ``best`` preset with ``--epochs`` epochs:

* ``plain``: the preset as it is;
* ``turned R:S:P[:T]``, one per ``--turns``: the same, plus the loop's turn augmentation (a rotation of up to R and
  a shear of up to S degrees, on a share P of the images, left out of the last T epochs), so both frameworks still
  see the same augmented batches.

Each model is then scored on the clean test set, on MNIST-C's rotate and shear families (:mod:`benchmark.quality.
corruptions`, five severities) and on the robustness benchmark's tilted product photos (8 and 15 degrees), every
file decoded by ``fashion.imaging.decode_image`` as the service decodes it, with the deskew on (as served) and off
(its tilt finder held at zero). The report goes to ``results/tilt-choice.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from contextlib import nullcontext
from unittest import mock

import numpy as np

from benchmark.harness import command_line, write_results
from benchmark.quality.corruptions import FAMILIES
from benchmark.quality.inputs import encode
from benchmark.quality.robustness import tilted

FAMILIES_TURNED = ("rotate", "shear")
TILTS = (8, 15)


def decoded(files: list[bytes], deskew: bool) -> np.ndarray:
    """The service's ``uint8[N, 28, 28]`` view of ``files``; ``deskew=False`` holds the tilt finder at zero."""
    from fashion import imaging

    held = nullcontext() if deskew else mock.patch.object(imaging, "tilt_of", return_value=0.0)
    with held:
        return np.stack([imaging.decode_image(f) for f in files])


def evaluation_sets(images: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every scored case as decoded pixels: the name says the family (or tilt), severity and deskew setting."""
    sets = {}
    for family in FAMILIES_TURNED:
        for severity in range(1, 6):
            rng = np.random.default_rng(seed)
            files = [encode(FAMILIES[family](image, severity, rng)) for image in images]
            sets[f"{family} {severity}"] = decoded(files, deskew=True)
    for degrees in TILTS:
        rng = np.random.default_rng(seed)
        files = [tilted(degrees)(image, rng) for image in images]
        for deskew in (True, False):
            sets[f"tilt-{degrees} deskew {'on' if deskew else 'off'}"] = decoded(files, deskew)
    return sets


def train(framework: str, config, data) -> tuple[object, float]:
    """A trainer fitted on ``config`` through the shared loop, and its training seconds."""
    from training.loop import fit
    from training.run import make_train_data, trainer_class

    trainer = trainer_class(framework)(config, "cpu")
    start = time.perf_counter()
    fit(trainer, make_train_data(data, config.seed, config.limit), config, progress=False)
    return trainer, time.perf_counter() - start


def accuracy(trainer, pixels: np.ndarray, labels: np.ndarray) -> float:
    from fashion.contract import preprocess

    return float((trainer.predict_logits(preprocess(pixels)).argmax(axis=1) == labels).mean())


def arms(args) -> dict[str, object]:
    """``plain`` (the preset) and one ``turned`` arm per ``ROTATE:SHEAR:SHARE[:PLAIN_EPOCHS]`` in ``args.turns``."""
    from training.config import get_preset

    plain = get_preset("best", epochs=args.epochs, seed=args.seed, limit=args.train_limit)
    out = {"plain": plain}
    for spec in args.turns:
        rotate, shear, share, *tail = spec.split(":")
        turn = dataclasses.replace(plain.augment, max_rotate=float(rotate), max_shear=float(shear),
                                   affine_share=float(share), plain_epochs=int(tail[0]) if tail else 0)
        out[f"turned {spec}"] = dataclasses.replace(plain, augment=turn)
    return out


def markdown(data: dict) -> str:
    rows = data["rows"]
    cases = list(rows[0]["accuracy"])
    lines = ["# Tilt: deskew or training on turned images", "",
             f"Written by `{data['command']}` (benchmark/quality/tilt_choice.py) on {data['machine']}. Each framework "
             f"is trained from the `best` preset for {data['epochs']} epochs on "
             f"{data['train_limit'] or 48000} images of the shared training split, through the one shared loader: "
             "`plain` (the preset) and `turned R:S:P[:T]` (plus the loop's turn augmentation: a rotation of up to "
             "R degrees and a horizontal shear of up to S degrees on a share P of the images, left out of the "
             "last T epochs). Clean accuracy is on "
             "the 10,000 test images; the other columns on the first "
             f"{data['n']} test images, each file decoded by `fashion.imaging.decode_image` as the service decodes "
             "it. Rotate and shear are MNIST-C's families (severity 3 is MNIST-C's parameter); tilt-8 and "
             "tilt-15 are the robustness benchmark's tilted product photos, with the deskew on (as served) or off.",
             "", "| framework | arm | train s | clean | " + " | ".join(cases) + " |",
             "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in cases) + " |"]
    for row in rows:
        lines.append(f"| {row['framework']} | {row['arm']} | {row['train_seconds']:.0f} | {row['clean']:.4f} | "
                     + " | ".join(f"{row['accuracy'][c]:.4f}" for c in cases) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frameworks", nargs="+", default=["torch", "tf"], help="default: torch tf")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run (default 15)")
    parser.add_argument("--turns", nargs="+", default=["25:25:0.5", "10:10:0.5"],
                        help="one turned arm per ROTATE:SHEAR:SHARE[:PLAIN_EPOCHS] (degrees, degrees, share of "
                             "images turned, last epochs without the turn; "
                             "default 25:25:0.5 10:10:0.5)")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="train on this many images of the shared training split (default: all 48,000)")
    parser.add_argument("--limit", type=int, default=1000, help="test images per turned case (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="training and corruption seed (default 0)")
    parser.add_argument("--name", default="tilt-choice", help="results file stem (default tilt-choice)")
    args = parser.parse_args(argv)

    from benchmark.harness import machine_name
    from fashion.data import load_fashion_mnist
    from fashion.env import environment_stamp

    data = load_fashion_mnist()
    images, labels = data.test_images[:args.limit], data.test_labels[:args.limit]
    sets = evaluation_sets(images, args.seed)
    result = {"command": command_line("benchmark.quality.tilt_choice", argv), "machine": machine_name(
        environment_stamp()), "epochs": args.epochs, "train_limit": args.train_limit, "n": args.limit, "rows": [],
        "turns": args.turns}
    for framework in args.frameworks:
        for arm, config in arms(args).items():
            trainer, seconds = train(framework, config, data)
            result["rows"].append({
                "framework": framework, "arm": arm, "train_seconds": seconds,
                "clean": accuracy(trainer, data.test_images, data.test_labels),
                "accuracy": {name: accuracy(trainer, pixels, labels) for name, pixels in sets.items()}})
            # Written after every model, so a long run that is stopped keeps what it finished.
            print(write_results(args.name, markdown(result), result), flush=True)


if __name__ == "__main__":
    main()
