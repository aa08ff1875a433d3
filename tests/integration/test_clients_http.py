"""The command-line client against the service in-process (tests.asgi): the batch job over the test set and a
folder with bad files, retries over injected 503s, the local mode, the classify table. A job killed part-way and
resumed needs a process of its own: tests/e2e/test_clients.py."""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from clients.__main__ import main as cli
from fashion.backends import load_artifact
from fashion.contract import preprocess
from fashion.data import IDX_FILES, idx_file_path
from fashion.imaging import encode_png
from fashion.manifest import read_manifest
from tests.asgi import point_cli_at, transport_of
from tests.helpers import free_port


@pytest.fixture
def url(http, monkeypatch):
    """The ``--url`` that sends the CLI's requests to the in-process service."""
    return point_cli_at(monkeypatch, http)


class FaultyTransport(httpx.BaseTransport):
    """The in-process service behind faults: a 503 to every ``fail_every``-th request. It forwards no ``Accept``
    header, as some proxies do: the batch CLI then gets JSON answers, and copes."""

    def __init__(self, http, fail_every: int) -> None:
        self.inner, self.fail_every, self.count = transport_of(http), fail_every, 0
        self.counting = threading.Lock()  # the CLI's request threads share this transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.counting:
            self.count += 1
            fail = self.count % self.fail_every == 0
        if fail:
            return httpx.Response(503, json=[{"error": "injected"}])
        request.headers.pop("accept", None)
        return self.inner.handle_request(request)


def offline(exported, pixels):
    predictor = load_artifact(exported["torch"], "onnx", "onnx", device="cpu")
    return predictor.predict(preprocess(pixels)).argmax(1)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_full_test_set_through_batch_matches_offline_model(url, exported, dataset, data_dir, tmp_path, capsys):
    images = idx_file_path(data_dir, IDX_FILES["test_images"])
    out = tmp_path / "preds.csv"
    assert cli(["--url", url, "batch", str(images), "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [f"{images.name}#{i}" for i in range(10000)]
    assert np.array_equal(np.array([int(r["class_id"]) for r in rows]), offline(exported, dataset.test_images))
    manifest = read_manifest(exported["torch"])
    printed = capsys.readouterr().out
    assert f"accuracy {manifest['artifacts']['onnx']['test_accuracy']:.4f}" in printed
    assert (tmp_path / "preds.confusion.png").stat().st_size > 0


def test_folder_with_bad_files_classifies_every_good_image(url, dataset, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "Ankle boot").mkdir(parents=True)
    (folder / "misc" / "deep").mkdir(parents=True)
    for i in range(12):
        (folder / "Ankle boot" / f"{i}.png").write_bytes(encode_png(dataset.test_images[i]))
    (folder / "misc" / "deep" / "ok.png").write_bytes(encode_png(dataset.test_images[20]))
    (folder / "misc" / "notes.txt").write_text("not an image")
    (folder / "misc" / "cut.png").write_bytes(encode_png(dataset.test_images[0])[:40])
    (folder / "misc" / "deep" / "noise.jpg").write_bytes(os.urandom(500))
    out = tmp_path / "preds.jsonl"
    assert cli(["--url", url, "batch", str(folder), "--out", str(out), "--quiet", "--batch-size", "4"]) == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 13
    errors = read_rows(tmp_path / "preds.errors.csv")
    assert sorted(e["id"] for e in errors) == ["misc/cut.png", "misc/deep/noise.jpg", "misc/notes.txt"]
    assert all(e["reason"] for e in errors)
    assert "total 16, ok 13, failed 3" in capsys.readouterr().out
    assert cli(["--url", url, "batch", str(folder), "--out", str(tmp_path / "x.csv"), "--quiet",
                "--fail-fast"]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_injected_503s_are_retried_until_every_input_is_classified(http, exported, dataset, tmp_path, capsys,
                                                                   monkeypatch):
    source = tmp_path / "part.npy"
    np.save(source, dataset.test_images[:2000])
    out = tmp_path / "preds.csv"
    url = point_cli_at(monkeypatch, http, FaultyTransport(http, fail_every=3))
    # Every third request fails, so one chunk could meet a few 503s in a row: allow 10 attempts.
    code = cli(["--url", url, "batch", str(source), "--out", str(out), "--quiet", "--batch-size", "100",
                "--retries", "10"])
    assert code == 0
    rows = read_rows(out)
    assert np.array_equal([int(r["class_id"]) for r in rows], offline(exported, dataset.test_images[:2000]))
    printed = capsys.readouterr().out
    retried = int(printed.split("retried ")[1].split(",")[0])
    assert retried >= 6  # 20 chunks: at least a third of the first tries were refused


def test_server_down_at_start_is_a_clear_failure(tmp_path, dataset, capsys):
    source = tmp_path / "part.npy"
    np.save(source, dataset.test_images[:10])
    out = tmp_path / "preds.csv"
    code = cli(["--url", f"http://127.0.0.1:{free_port()}", "batch", str(source), "--out", str(out), "--quiet"])
    assert code == 2 and not out.exists()
    assert "is not reachable" in capsys.readouterr().err


def test_local_mode_writes_the_same_output_as_the_service(url, exported, dataset, tmp_path):
    source = tmp_path / "part.npy"
    np.save(source, dataset.test_images[:3000])
    remote, local = tmp_path / "remote.csv", tmp_path / "local.csv"
    assert cli(["--url", url, "batch", str(source), "--out", str(remote), "--quiet"]) == 0
    model = str(exported["torch"])
    assert cli(["batch", str(source), "--out", str(local), "--quiet", "--local", "--model", model]) == 0
    assert local.read_bytes() == remote.read_bytes()


def test_classify_command_prints_a_table(url, capsys):
    from fashion.samples import sample_paths

    paths = [str(p) for p in sample_paths()[:3]]
    assert cli(["--url", url, "classify", *paths]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(p in line for p, line in zip(paths, printed, strict=True))
