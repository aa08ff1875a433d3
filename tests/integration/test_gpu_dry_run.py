"""The benchmark's GPU rows end to end with CPU stand-ins (``--device cpu``), on the quick models.

What a GPU server runs, minus the GPU: the ceilings, every in-process variant checked on all
10,000 test images, the end-to-end pipeline, and a report named and titled as a dry run. The
service stage needs two ``bentoml serve`` processes and wrk; docs/gpu.md gives its dry-run command.
"""

from __future__ import annotations

import json

import pytest

from benchmark.__main__ import main

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def test_dry_run_checks_every_row_and_says_it_is_not_a_gpu_run(exported, data_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["--device", "cpu", "--quick", "--stages", "ceilings", "variants", "endtoend",
                 "--models", str(exported["torch"].parents[1]), "--data-dir", str(data_dir), "--out", str(out)])
    assert code == 0
    [report] = out.glob("*.md")
    assert report.name.endswith("-cpu-dry-run.md")
    text = report.read_text()
    assert "(CPU DRY RUN of the GPU rows, not GPU results)" in text.splitlines()[0]
    assert "None: every row ran where it was asked to." in text
    stages = json.loads(report.with_suffix(".json").read_text())["stages"]
    assert not [name for name, stage in stages.items() if "error" in stage]
    assert set(stages["ceilings"]["matmul_flops"]) == {"fp32", "tf32", "fp16", "bf16"}
    rows = {r["name"]: r for r in stages["variants"]["rows"]}
    assert {"onnx-torch ort", "onnx-torch ort io-binding", "onnx-tf ort io-binding", "torch eager bf16",
            "torch compile fp32"} <= set(rows)
    for row in rows.values():
        assert row["requested"] == "cpu" and row["correctness"]["images"] == 10_000
        if row["precision"] == "fp32":  # same model, same precision as the reference: same answers
            assert row["correctness"]["agreement_with_fp32"] == 1.0
            assert row["correctness"]["max_abs_dp"] < 1e-4
    assert stages["endtoend"]["rows"] and not [r for r in stages["endtoend"]["rows"] if "error" in r]
    for row in stages["endtoend"]["rows"]:
        assert row.get("same_answers_as_test", 1.0) == 1.0  # tiled images get the test set's answers back
        if "accuracy" in row:
            assert abs(row["accuracy"] - rows["torch"]["correctness"]["accuracy"]) < 0.01
