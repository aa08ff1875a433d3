"""Ten real Fashion-MNIST test images, one per class, shipped with the package.

They serve as warm-up and self-check inputs for the service, examples for the
README and the web page, and need no dataset on the serving machine. File
names are ``<class id>-<class slug>-test<index in the official test set>.png``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np


def sample_paths() -> list[Path]:
    """The ten PNG files, in class order."""
    folder = resources.files("fashion.samples")
    return sorted((Path(str(folder)) / p.name for p in folder.iterdir() if p.name.endswith(".png")),
                  key=lambda p: int(p.name.split("-", 1)[0]))


def sample_images() -> tuple[np.ndarray, np.ndarray]:
    """``uint8[10, 28, 28]`` pixels and their true class ids."""
    from fashion.imaging import decode_image

    paths = sample_paths()
    pixels = np.stack([decode_image(p.read_bytes()) for p in paths])
    return pixels, np.array([int(p.name.split("-", 1)[0]) for p in paths])
