"""The GPU benchmark end to end with CPU stand-ins (``--device cpu``), on the quick models.

What a GPU server will run, minus the GPU: every in-process variant checked on all
10,000 test images, the end-to-end pipeline, the batch CLI, and a report marked as a dry run.
The service stage needs two ``bentoml serve`` processes and wrk; docs/gpu.md records its dry run.
"""

from __future__ import annotations

import json

from benchmark.gpu.__main__ import main


def test_dry_run_checks_every_row_and_says_it_is_not_a_gpu_run(exported, data_dir, tmp_path):
    models = exported["torch"].parents[1]
    out = tmp_path / "out"
    code = main(["--device", "cpu", "--stages", "ceilings", "inprocess", "endtoend", "diagnose", "cli",
                 "--models", str(models), "--data", str(data_dir), "--out", str(out),
                 "--state", str(tmp_path / "state.json"), "--fresh"])
    assert code == 0
    [report] = out.glob("*.md")
    assert report.name.endswith("-cpu-dry-run.md")
    text = report.read_text()
    assert text.startswith("# GPU benchmark: CPU DRY RUN") and "None: every row ran where it was asked to." in text
    state = json.loads(report.with_suffix(".json").read_text())
    stages = state["stages"]
    assert not [name for name, stage in stages.items() if "error" in stage]
    rows = {r["name"]: r for r in stages["inprocess"]["rows"]}
    assert {"onnx-torch ort", "onnx-torch ort io-binding", "onnx-tf ort io-binding", "torch eager bf16",
            "torch compile fp32"} <= set(rows)
    for row in rows.values():
        assert row["requested"] == "cpu" and row["correctness"]["images"] == 10_000
        if row["precision"] == "fp32":  # same model, same precision as the reference: same answers
            assert row["correctness"]["agreement_with_fp32"] == 1.0
            assert row["correctness"]["max_abs_dp"] < 1e-4
    for row in stages["endtoend"]["rows"]:
        assert row.get("same_answers_as_test", 1.0) == 1.0  # tiled images get the test set's answers back
    for profile in stages["diagnose"]["layers"]:  # one timing per layer of the model
        assert len(profile["layers"]) == len(state["stages"]["diagnose"]["layers"][0]["layers"]) > 1
        assert profile["matmul_seconds"] > 0 and profile["forward_seconds"] > 0
    for row in stages["cli"]["rows"]:
        assert row["exit_code"] == 0 and row["images"] == 10_000
        assert abs(row["accuracy"] - rows["onnx-torch ort"]["correctness"]["accuracy"]) < 1e-9
