"""torchvision's job in the ``train`` extra: an independent reader of the same IDX files as ours.

If our loader ever mis-parsed a header, skipped bytes or swapped the train and test files, both
frameworks would train on the same wrong data and every other test would still agree with itself.
"""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from fashion.contract import CLASS_NAMES
from fashion.data import IDX_FILES, idx_file_path


def stage_raw_files(data_dir, root):
    """Put the four files, decompressed, where ``torchvision.datasets.FashionMNIST`` looks for them."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for spec in IDX_FILES.values():
        source = idx_file_path(data_dir, spec)
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as src, open(raw / spec.name, "wb") as dst:
            shutil.copyfileobj(src, dst)


@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_torchvision_reads_the_same_images_and_labels_as_our_loader(data_dir, dataset, tmp_path, train):
    datasets = pytest.importorskip("torchvision.datasets", reason="torchvision is in the train extra")
    stage_raw_files(data_dir, tmp_path)
    theirs = datasets.FashionMNIST(str(tmp_path), train=train, download=False)
    split = "train" if train else "test"
    images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
    np.testing.assert_array_equal(theirs.data.numpy(), images)
    np.testing.assert_array_equal(theirs.targets.numpy(), labels)
    assert tuple(theirs.classes) == CLASS_NAMES
