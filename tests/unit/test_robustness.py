"""The corruption families (benchmark.corruptions) and the robustness report (benchmark.robustness)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.quality import corruptions
from benchmark.quality.corruptions import FAMILIES, severities
from benchmark.quality.robustness import cases, markdown, summary
from fashion.imaging import decode_image

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def garment() -> np.ndarray:
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[:, 8:20] = 200
    pixels[2:6, 4:24] = 255
    return pixels


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_seeded_and_keeps_the_format(family):
    for severity in severities(family):
        first = FAMILIES[family](garment(), severity, np.random.default_rng(3))
        again = FAMILIES[family](garment(), severity, np.random.default_rng(3))
        assert first.shape == (28, 28) and first.dtype == np.uint8
        assert np.array_equal(first, again)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in corruptions.SINGLE_LEVEL])
def test_harsher_severities_change_the_image_more(family):
    """Mean change from the clean image, averaged over seeds, grows from severity 1 to 5."""
    def change(severity: int) -> float:
        return float(np.mean([np.abs(FAMILIES[family](garment(), severity, np.random.default_rng(s)).astype(float)
                                     - garment()).mean() for s in range(8)]))
    assert change(1) < change(3) < change(5)


def test_definitions_on_known_images():
    """Brightness adds, contrast pulls to the mean, inverse negates, scale shrinks about the centre."""
    image = garment()
    assert np.array_equal(corruptions.inverse(image, 3, None), 255 - image)
    bright = corruptions.brightness(image, 3, None).astype(int)
    assert np.array_equal(bright, np.minimum(image.astype(int) + 128, 255))  # + 0.5 of full scale, rounded
    faded = corruptions.contrast(image, 3, None).astype(float)
    assert faded.max() - faded.min() == pytest.approx(0.1 * 255, abs=1)
    shrunk = corruptions.scale(image, 3, None)
    rows = np.flatnonzero(shrunk.max(axis=1) > 100)
    assert 18 <= len(rows) <= 21 and abs((rows[0] + rows[-1]) / 2 - 13.5) <= 1  # 0.7 of 28, centred
    turned = corruptions.rotate(image, 3, np.random.default_rng(0))
    assert abs(float(turned.astype(float).sum()) / image.astype(float).sum() - 1) < 0.15  # mass kept


def test_every_case_makes_files_the_decoder_reads():
    """Each case's files decode to 28 x 28 (EXIF, transparency, 16-bit, palette, CMYK, tilt, light)."""
    rng = np.random.default_rng(0)
    for case in cases():
        assert decode_image(case.make(garment(), rng)).shape == (28, 28), case.family


def test_report_summarises_against_the_baseline():
    """Points are differences from the same run's 28 x 28 baseline; severity 3 drops are averaged per family."""
    def row(group, family, severity, accuracy, flagged=0.05):
        return {"group": group, "family": family, "severity": severity, "description": family, "n": 10,
                "b": {"accuracy": accuracy, "not_clothing": flagged}}
    rows = [row("baseline", "28x28", 0, 0.9), row("delivery", "exif-6", 0, 0.89, 0.07),
            row("capture", "tilt-15", 0, 0.85), row("capture", "light-30", 0, 0.88),
            row("corruption", "shear", 3, 0.8), row("corruption", "rotate", 3, 0.6),
            row("corruption", "shear", 1, 0.1)]
    s = summary(rows, ["b"])["b"]
    assert s["delivery_worst_drop"] == pytest.approx(1.0)
    assert s["delivery_worst_not_clothing_rise"] == pytest.approx(2.0)
    assert s["tilt_worst_drop"] == pytest.approx(5.0) and s["light_30_drop"] == pytest.approx(2.0)
    assert s["severity_3_mean_drop"] == pytest.approx(20.0)
    assert s["severity_3_worst"][0] == "rotate"
    run = {"command": "c", "code": "x", "n": 10, "models": None, "backends": ["b"], "rows": rows}
    text = markdown({"runs": {"before": run, "after": run}})
    assert "| before | b | 0.9000 |" in text and "| exif-6 |" in text and "rotate 30.0" in text
