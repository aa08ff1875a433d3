"""benchmark.work_cost without a model: the upload stages before and after, in one quick run, and its report."""

from __future__ import annotations

import json

import pytest

from benchmark import work_cost

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def test_the_upload_run_times_each_stage_both_ways_and_writes_its_report(tmp_path):
    assert work_cost.main(["upload", "--quick", "--out", str(tmp_path)]) == 0
    [data] = tmp_path.glob("upload-cost-*.json")
    report = json.loads(data.read_text())
    assert [row["stage"] for row in report["rows"]] == ["form parsing", "decoding", "both"]
    assert all(row["before_s"] > 0 and row["after_s"] > 0 for row in report["rows"])
    assert "| form parsing |" in data.with_suffix(".md").read_text()


def test_both_form_parsers_find_the_same_files():
    body = work_cost.multipart_body(b"\x89PNG image bytes", work_cost.BOUNDARY)
    content_type = f"multipart/form-data; boundary={work_cost.BOUNDARY}"
    assert work_cost.completed(work_cost.starlette_form(body, content_type)) == \
        work_cost.completed(work_cost.split_form(body, content_type)) == [b"\x89PNG image bytes"]
