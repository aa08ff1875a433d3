"""The event-loop comparison (reliability.loops): medians per level, and a report that shows every run."""

from __future__ import annotations

from pathlib import Path

from reliability import loops


def fake_wrk(rps_by_level: dict[int, list[float]]):
    """A stand-in for ``run_wrk`` that answers each level's figures in turn (the warm-up gets the first)."""
    calls: dict[int, int] = {}

    def run(url: str, connections: int, seconds: float, body_file: Path, boundary: str) -> dict:
        index = calls.get(connections, 0)
        calls[connections] = index + 1
        rps = rps_by_level[connections][min(index, len(rps_by_level[connections]) - 1)]
        return {"rps": rps, "p50_us": 1000.0 * connections, "p99_us": 3000.0 * connections, "requests": 100,
                "statuses": {"200": 99, "429": 1}}

    return run


class FakeServer:
    url = "http://127.0.0.1:1"


def test_closed_loop_takes_the_median_of_the_repetitions_at_each_level(monkeypatch, tmp_path):
    # 16 connections: the warm-up, then three repetitions.
    monkeypatch.setattr(loops, "run_wrk", fake_wrk({1: [10, 30, 20], 16: [0, 5, 1, 3], 64: [7, 8, 9]}))
    rows = loops.closed_loop(FakeServer(), tmp_path, seconds=1, reps=3)
    assert [(r["connections"], r["rps"], r["non_200"]) for r in rows] == [(1, 20, 3), (16, 3, 3), (64, 8, 3)]
    assert rows[0]["p99_ms"] == 3.0 and rows[2]["p50_ms"] == 64.0


def test_the_report_lists_every_run_with_its_loop_and_the_single_client_tail_ratio():
    flood = {"connections": 1024, "seconds": 30.0, "responses": 5000, "statuses": {"200": 1000, "429": 4000},
             "socket_errors": {"connect": 0, "timeout": 0}, "p50_ms": 200.0, "p99_ms": 550.0, "max_ms": 900.0,
             "answered_200_rps": 33, "sustainable_rps": 1200, "recovery_s": 0.5}
    bench = [{"connections": c, "rps": 900.0, "p50_ms": 1.0, "p99_ms": 2.5, "non_200": 0} for c in loops.LEVELS]
    run = {"event_loop": "asyncio.unix_events._UnixSelectorEventLoop", "closed_loop": bench, "overload": flood,
           "load_average_before": [0.5, 0.4, 0.3], "host_steal_s": 0.0, "when": "2026-01-01T00:00:00+00:00"}
    text = loops.render({"machine": "test-2c", "runs": [{"loop": "asyncio", **run}, {"loop": "auto", **run}]})
    rows = [line for line in text.splitlines() if line.startswith("| asyncio |") or line.startswith("| auto |")]
    assert len(rows) == 4  # each run in both tables
    assert "| 2.5 |" in rows[0] and "550" in rows[2] and "{'200': 1000, '429': 4000}" in rows[2]
