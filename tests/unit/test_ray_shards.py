"""How ``--engine ray`` cuts its inputs into shards and commits them (no Ray needed: the planning is plain code)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clients.batch import JobError
from clients.ray_engine import SUMMARY, commit, open_parts, plan_shards
from clients.sources import SourceError


def test_a_folder_of_arrays_is_one_shard_per_file_and_idx_labels_ride_along(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 28, 28), np.uint8))
    np.savez(tmp_path / "b.npz", images=np.zeros((5, 28, 28), np.uint8))
    (tmp_path / "t-images-idx3-ubyte").write_bytes(bytes.fromhex("00000803") + (2).to_bytes(4, "big")
                                                   + (28).to_bytes(4, "big") * 2 + bytes(2 * 784))
    (tmp_path / "t-labels-idx1-ubyte").write_bytes(bytes.fromhex("00000801") + (2).to_bytes(4, "big") + b"\x01\x02")
    shards = plan_shards([str(tmp_path)], shard_size=1)
    assert [(s.index, s.images, s.array.rsplit("/", 1)[1]) for s in shards] == [
        (0, 3, "a.npy"), (1, 5, "b.npz"), (2, 2, "t-images-idx3-ubyte")]
    chunk = next(shards[2].source().chunks(0, 10))
    assert chunk.labels.tolist() == [1, 2]


def test_a_folder_of_images_is_cut_in_runs_in_the_clis_order(tmp_path):
    for name in ("Shirt/b.png", "Shirt/a.png", "Bag/z.png", "top.png", "Bag/.hidden.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    shards = plan_shards([str(tmp_path)], shard_size=2)
    assert [[f[0] for f in s.files] for s in shards] == [["top.png", "Bag/z.png"], ["Shirt/a.png", "Shirt/b.png"]]
    assert [f[2] for f in shards[0].files] == [None, 8]  # a label where the folder names a class


def test_inputs_continue_the_numbering_and_bad_ones_fail_before_any_work(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 28, 28), np.uint8))
    assert [s.index for s in plan_shards([str(tmp_path / "a.npy")] * 3, 10)] == [0, 1, 2]
    np.save(tmp_path / "wrong.npy", np.zeros((1, 5), np.float32))
    with pytest.raises(SourceError, match="28 x 28"):
        plan_shards([str(tmp_path / "a.npy"), str(tmp_path / "wrong.npy")], 10)
    with pytest.raises(SourceError, match="no such"):
        plan_shards([str(tmp_path / "missing")], 10)


def test_a_parts_folder_resumes_only_with_resume_and_the_same_shards(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 28, 28), np.uint8))
    out = tmp_path / "out.csv"
    shards = plan_shards([str(tmp_path / "a.npy")], 10)
    parts = open_parts(out, shards, resume=False)
    with pytest.raises(JobError, match="--resume"):
        open_parts(out, shards, resume=False)
    assert open_parts(out, shards, resume=True) == parts
    with pytest.raises(JobError, match="other inputs"):
        open_parts(out, shards * 2, resume=True)


def test_the_first_commit_of_a_shard_stands(tmp_path):
    first, second, final = tmp_path / "first", tmp_path / "second", tmp_path / "00000"
    for attempt, text in ((first, "first"), (second, "second")):
        attempt.mkdir()
        (attempt / SUMMARY).write_text(json.dumps(text))
    commit(first, final)
    commit(second, final)
    assert json.loads((final / SUMMARY).read_text()) == "first" and not second.exists()
