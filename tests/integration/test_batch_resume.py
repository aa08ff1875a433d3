"""A batch job killed at any point and resumed writes exactly the output of an uninterrupted run.

The job runs in a child process that kills itself with SIGKILL when its journal reaches a
chosen chunk: either just after the journal line is written ("after"), or halfway through
writing it ("torn": the rows are in the part file, the journal line is cut). The kill point
is drawn at random, from a fixed seed, so every run of the test is the same run.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.__main__ import main as cli
from fashion.imaging import encode_png

REPO = Path(__file__).resolve().parents[2]
# Wraps the job's journal so that the process kills itself at chunk KILL_AT (a deterministic point, reached by
# the job's own progress rather than a timer), then runs the batch CLI.
KILLER = """
import os, signal, sys
import clients.batch as batch

at, how = int(sys.argv[1]), sys.argv[2]

class KillingJournal:
    def __init__(self, sink):
        self.sink, self.lines = sink, 0
    def write(self, data):
        self.lines += 1
        if self.lines == at:
            self.sink.write(data[: len(data) // 2] if how == "torn" else data)
            self.sink.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.sink.write(data)
    def __getattr__(self, name):
        return getattr(self.sink, name)

opened = batch.Job.__init__
def patched(self, *args, **kwargs):
    opened(self, *args, **kwargs)
    self.sink = KillingJournal(self.sink)
batch.Job.__init__ = patched

from clients.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


def killed_run(kill_at: int, how: str, args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER, str(kill_at), how, *args], cwd=REPO, capture_output=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


@pytest.fixture(scope="module")
def labelled_npz(tmp_path_factory, dataset):
    path = tmp_path_factory.mktemp("resume") / "test.npz"
    np.savez(path, images=dataset.test_images[:2500], labels=dataset.test_labels[:2500])
    return path


@pytest.mark.parametrize("how", ["after", "torn"])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_killed_and_resumed_equals_uninterrupted(exported, labelled_npz, tmp_path, capsys, suffix, how):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="Parquet output needs the [parquet] extra")
    common = ["--local", "--model", str(exported["torch"]), "--quiet", "--batch-size", "100"]
    reference = tmp_path / f"reference{suffix}"
    assert cli(["batch", str(labelled_npz), "--out", str(reference), *common]) == 0
    kill_at = random.Random(f"{suffix}-{how}").randint(1, 24)  # 25 chunks of 100
    out = tmp_path / f"resumed{suffix}"
    killed_run(kill_at, how, ["batch", str(labelled_npz), "--out", str(out), *common])
    assert not out.exists() and (tmp_path / f"resumed{suffix}.journal").exists()
    capsys.readouterr()
    assert cli(["batch", str(labelled_npz), "--out", str(out), *common, "--resume"]) == 0
    done_before = (kill_at - (how == "torn")) * 100
    assert f"{done_before} taken from the journal" in capsys.readouterr().out
    assert out.read_bytes() == reference.read_bytes(), f"kill at chunk {kill_at} ({how})"
    assert not (tmp_path / f"resumed{suffix}.journal").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [reference.name, out.name, "reference.errors.csv", "resumed.errors.csv", "reference.confusion.png",
         "resumed.confusion.png"])


def test_a_folder_with_bad_files_resumes_its_error_report_too(exported, dataset, tmp_path):
    folder = tmp_path / "in"
    (folder / "Trouser").mkdir(parents=True)
    for i in range(40):
        (folder / "Trouser" / f"{i:02d}.png").write_bytes(encode_png(dataset.test_images[i]))
        if i % 9 == 0:
            (folder / "Trouser" / f"{i:02d}-bad.png").write_bytes(b"not a png")
    common = ["--local", "--model", str(exported["torch"]), "--quiet", "--batch-size", "8"]
    reference, out = tmp_path / "reference.csv", tmp_path / "resumed.csv"
    assert cli(["batch", str(folder), "--out", str(reference), *common]) == 1
    killed_run(3, "torn", ["batch", str(folder), "--out", str(out), *common])
    assert cli(["batch", str(folder), "--out", str(out), *common, "--resume"]) == 1
    assert out.read_bytes() == reference.read_bytes()
    errors = (tmp_path / "resumed.errors.csv").read_text()
    assert errors == (tmp_path / "reference.errors.csv").read_text()
    assert errors.count("-bad.png") == 5
