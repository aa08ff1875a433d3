"""The tilt study (benchmark.quality.tilt_choice): its arms, its deskew switch and its report."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from benchmark.quality.robustness import tilted
from benchmark.quality.tilt_choice import arms, decoded, markdown
from fashion import imaging

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def test_the_arms_differ_only_in_the_turn():
    args = argparse.Namespace(epochs=3, seed=1, train_limit=500, turns=["20:10:0.5", "20:10:0.5:2"])
    assert list(arms(args)) == ["plain", "turned 20:10:0.5", "turned 20:10:0.5:2"]
    plain, turned, tailed = arms(args).values()
    assert dataclasses.replace(turned, augment=plain.augment) == plain
    assert (turned.augment.max_rotate, turned.augment.max_shear, turned.augment.affine_share) == (20.0, 10.0, 0.5)
    assert turned.augment.plain_epochs == 0 and dataclasses.replace(tailed.augment, plain_epochs=0) == turned.augment
    assert tailed.augment.plain_epochs == 2
    assert plain.augment.max_rotate == plain.augment.max_shear == 0 and plain.epochs == 3 and plain.limit == 500


def test_deskew_off_holds_the_tilt_finder_only_while_decoding():
    garment = np.zeros((28, 28), dtype=np.uint8)
    garment[2:26, 10:18], garment[2:8, 4:24] = 220, 255  # a T: upright is clear
    files = [tilted(15)(garment, np.random.default_rng(0))]
    on, off = decoded(files, deskew=True), decoded(files, deskew=False)
    assert on.shape == off.shape == (1, 28, 28) and not np.array_equal(on, off)
    assert np.array_equal(decoded(files, deskew=True), on)  # the finder is back afterwards
    assert imaging.tilt_of is not None and "mock" not in type(imaging.tilt_of).__module__


def test_the_report_has_a_line_per_model_and_a_column_per_case():
    row = {"framework": "torch", "arm": "plain", "train_seconds": 1.0, "clean": 0.9,
           "accuracy": {"rotate 3": 0.5, "tilt-15 deskew on": 0.8}}
    text = markdown({"command": "python -m benchmark.quality.tilt_choice", "machine": "m", "epochs": 1,
                     "train_limit": None, "n": 10, "turns": ["1:1:1"], "rows": [row, {**row, "arm": "turned"}]})
    table = [line for line in text.splitlines() if line.startswith("| torch")]
    assert len(table) == 2 and all(line.count("|") == 7 for line in table)
    assert "| rotate 3 | tilt-15 deskew on |" in text
