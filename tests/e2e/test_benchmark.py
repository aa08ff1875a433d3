"""The side-by-side benchmark's quick mode, end to end (real service, real wrk): a benchmark run, so never in
``make test`` (``make test-bench`` runs it). The harness's timing helpers: tests/unit/test_bench_timing.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fashion.backends import BACKENDS
from fashion.manifest import read_manifest

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.benchmark
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk); .ci/run installs it")
def test_quick_benchmark_writes_a_full_report(server, exported, bentoml_home, tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmark", "--quick", "--out", str(tmp_path)], cwd=REPO,
                            env={**os.environ, "BENTOML_HOME": str(bentoml_home), "TF_CPP_MIN_LOG_LEVEL": "3"},
                            capture_output=True, text=True, timeout=600)  # a hang guard: ~30 s expected
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [report] = tmp_path.glob("benchmark-*.md")
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["seconds"] > 0  # its duration is a figure of the report, not a pass mark
    sweep = data["inprocess"]["sweep"]
    assert {r["backend"] for r in sweep} == {*BACKENDS, "torch-compile"}
    assert {r["batch"] for r in sweep} == {1, 8, 64, 256, 1024}
    assert all(r["images_per_s"] > 0 and r["median_s"] <= r["p99_s"] for r in sweep)
    assert data["inprocess"]["ceiling_images_per_s"] > 0 and data["inprocess"]["wrapper_overhead"]["ratio"] > 0
    accuracy = data["inprocess"]["correctness"]["accuracy"]
    for name, spec in BACKENDS.items():
        model_dir = exported["torch" if spec.model.endswith("torch") else "tf"]
        recorded = read_manifest(model_dir)["artifacts"][spec.artifact]["test_accuracy"]
        if spec.artifact == "onnx-int8":
            # Dynamic quantisation scales activations per batch: chunks of 1,024 are not one batch of 10,000.
            assert abs(accuracy[name] - recorded) < 0.01
        else:
            assert accuracy[name] == recorded
    rows = data["http"]["rows"]
    assert {r["target"] for r in rows if r["kind"] == "single"} == {"bare-starlette", "onnx-torch"}
    assert all(set(r["statuses"]) == {"200"} for r in rows)
    assert any(r.get("mean_batch_size") for r in rows)
    assert {r["target"] for r in rows if r["kind"] == "format"} == {"png", "npy", "json", "v2-binary", "v2-json"}
    assert data["http"]["task"]["status"] == "completed" and data["http"]["task"]["online_requests"] > 0
    assert data["http"]["open_loop"]["sent"] > 0
    text = report.read_text()
    assert "## Conclusions" in text and "## Correctness" in text and "bare-starlette" in text
    assert (tmp_path / f"{report.stem}-throughput.png").stat().st_size > 0
    assert (tmp_path / f"{report.stem}-latency.png").stat().st_size > 0
