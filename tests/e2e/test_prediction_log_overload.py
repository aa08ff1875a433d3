"""The prediction log under the overload scenario of tests/e2e/test_reliability.py (512 connections): the flood's
own checks still pass, and the log holds a record of every image of every request the service answered."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmark.harness import launch
from benchmark.reliability import scenarios


def answered_requests(url: str) -> float:
    """Requests a model answered, from the service's own ``fashion_request_stage_seconds`` (its model stage)."""
    return sum(sample.value for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
               for sample in family.samples
               if sample.name == "fashion_request_stage_seconds_count" and sample.labels.get("stage") == "model")


def test_the_prediction_log_loses_no_answer_and_holds_none_up_under_overload(server, tmp_path, data_dir):
    log_file = tmp_path / "predictions.jsonl"
    instance = launch(tmp_path, env={"FASHION_MAX_IN_FLIGHT": "64", "FASHION_PREDICTION_LOG": str(log_file),
                                     "FASHION_PREDICTION_LOG_SAMPLE": "1"})
    try:
        images = next(Path(data_dir).glob("t10k-images-idx3-ubyte*"))
        report = scenarios.overload(instance, tmp_path, seconds=6, connections=512, batch_input=images,
                                    batch_items=10_000, probe_timeout_s=60, recovery_limit_s=120)
        answered = answered_requests(instance.url)
    finally:
        assert instance.stop() == 0  # the writer empties its queue as the worker stops
    # The overload test's own promises hold with the log on.
    assert report["unexpected_statuses"] == {} and report["statuses"].get("429", 0) > 0, report["statuses"]
    assert sum(report["socket_errors"].values()) == 0, report["socket_errors"]
    job = report["batch_job"]
    assert (job["exit_code"], job["rows"], job["lost"], job["duplicates"]) == (0, 10_000, 0, 0), job
    # Every answered request is in the log (the /metrics request itself was not answered by a model).
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert len({record["request_id"] for record in records}) == answered > report["statuses"]["200"] > 0
    assert len({(record["request_id"], record["image"]) for record in records}) == len(records)
