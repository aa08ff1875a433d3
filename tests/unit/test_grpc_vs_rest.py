"""benchmark.grpc_vs_rest's summary: medians per level and protocol, and gRPC's ratio to REST."""

from __future__ import annotations

import argparse

import pytest

from benchmark.grpc_vs_rest import SERVER_COLUMNS, report, summarize
from benchmark.peers import LEVELS

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def rows_for(protocol: str, rates: list[float]) -> list[dict]:
    return [{"protocol": protocol, "connections": level, "rep": rep, "infer_per_s": rate * level,
             "p50_ms": rate / 100, "p99_ms": rate / 10, **{key: rate for key in SERVER_COLUMNS}}
            for level in LEVELS for rep, rate in enumerate(rates)]


def test_medians_and_the_ratio_per_level():
    table = summarize(rows_for("http", [100.0, 300.0, 200.0]) + rows_for("grpc", [260.0, 1000.0, 250.0]))
    assert [row["connections"] for row in table] == list(LEVELS)
    for row in table:
        level = row["connections"]
        assert row["http_infer_per_s"] == 200.0 * level and row["grpc_infer_per_s"] == 260.0 * level
        assert row["grpc_over_http"] == pytest.approx(1.3)
        assert row["grpc_p99_ms"] == 26.0 and row["http_server_queue_us"] == 200.0


def test_the_report_carries_the_note_and_one_line_per_level():
    table = summarize(rows_for("http", [100.0]) + rows_for("grpc", [50.0]))
    text = report(table, argparse.Namespace(seconds=5.0, reps=1, note="shared machine"),
                  {"cpu": "Some CPU", "cores": 2})
    assert "Note: shared machine" in text and "| 0.50 |" in text
    speed, server = text.split("The server's own times")
    assert sum(line.startswith("| ") and line[2].isdigit() for line in speed.splitlines()) == len(LEVELS)
    assert sum(line.startswith("| ") and line[2].isdigit() for line in server.splitlines()) == 2 * len(LEVELS)
