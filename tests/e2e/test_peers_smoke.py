"""``python -m benchmark.peers`` end to end with one peer and one-second runs: the report is complete.

The bare app runs in this venv, so the smoke needs no package index; the other peers' venvs take
minutes to build the first time and are left to ``make peers``. A benchmark run, so never in ``make test``:
``make test-bench`` runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.lab, pytest.mark.benchmark]  # it times the peers harness with wrk


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk); .ci/run installs it")
def test_peers_smoke_run_writes_table_json_and_plot(server, bentoml_home, tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmark.peers", "--only", "bare multipart PNG", "--seconds", "1",
                             "--reps", "2", "--no-perf-analyzer", "--cache", str(tmp_path / "venvs"),
                             "--out", str(tmp_path), "--note", "smoke"], cwd=REPO,
                            env={**os.environ, "BENTOML_HOME": str(bentoml_home)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [report] = tmp_path.glob("peers-*.json")
    data = json.loads(report.read_text())
    assert {(r["connections"], r["rep"]) for r in data["runs"]} == {(c, rep) for c in (1, 16, 64) for rep in (0, 1)}
    assert all(r["rps"] > 0 and r["statuses"].get("200") for r in data["runs"])
    assert [m["reps"] for m in data["medians"]] == [2, 2, 2]
    assert data["peers"][0]["venv_mb"] > 0 and data["failures"] == {}
    assert not (tmp_path / "venvs").exists()  # the bare app needs no venv of its own
    table = report.with_suffix(".md").read_text()
    assert "| bare multipart PNG | multipart PNG |" in table and report.with_suffix(".png").stat().st_size > 0
