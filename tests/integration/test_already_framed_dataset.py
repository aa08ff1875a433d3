"""The early exit for uploads already in Fashion-MNIST's format, over the real test images: each one, sent as the
28 x 28 PNG it is, decodes to the same pixels with the exit as through the full path, and most take the exit."""

from __future__ import annotations

import numpy as np

from fashion import imaging
from fashion.imaging import encode_png

IMAGES = 2000  # the first test images: every class, and the exit's every branch (enough seconds for the tier)


def test_the_test_images_decode_alike_with_and_without_the_early_exit(dataset, monkeypatch):
    files = [encode_png(image) for image in dataset.test_images[:IMAGES]]
    calls = []
    framed = imaging.already_framed

    def counted(image, invert=None):
        calls.append(found := framed(image, invert))
        return found

    monkeypatch.setattr(imaging, "already_framed", counted)
    fast = np.stack([imaging.decode_image(data) for data in files])
    taken = sum(found is not None for found in calls)
    monkeypatch.setattr(imaging, "already_framed", lambda image, invert=None: None)
    full = np.stack([imaging.decode_image(data) for data in files])
    assert np.array_equal(fast, full)
    assert taken >= 0.9 * IMAGES, f"only {taken} of {IMAGES} dataset images took the early exit"
