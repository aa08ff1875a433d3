"""Reliability and security of the running service: overload, shutdown, crash, hostile clients, a fuzzed API.
Hostile request bodies need no process: tests/integration/test_hostile_requests.py.

Short versions of the scenarios in reliability/scenarios.py, each against its own
real ``bentoml serve``; ``python -m reliability`` runs the full lengths and writes
results/reliability.md (the soak: ``python -m reliability soak``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from benchmark.harness import launch
from benchmark.reliability import scenarios
from fashion.samples import sample_paths

REPO = Path(__file__).resolve().parents[2]
SAMPLE = sample_paths()[0].read_bytes()


@pytest.fixture()
def own_server(server, tmp_path):
    """A server of its own (this test may kill it), over the session's registered models."""
    instance = launch(tmp_path)
    yield instance
    instance.stop()


def flood(tmp_path: Path, data_dir, seconds: float, connections: int, env: dict[str, str] | None = None) -> dict:
    """The overload scenario against a server of its own, the batch CLI over the test images alongside.

    Probe timeouts and the recovery limit are hang guards here (the figures are recorded by
    ``python -m reliability``): a probe answers in milliseconds, recovery takes about a second.
    """
    instance = launch(tmp_path, env=env)
    try:
        images = next(Path(data_dir).glob("t10k-images-idx3-ubyte*"))
        return scenarios.overload(instance, tmp_path, seconds=seconds, connections=connections, batch_input=images,
                                  batch_items=10_000, probe_timeout_s=60, recovery_limit_s=120)
    finally:
        assert instance.stop() == 0


def test_overload_sheds_load_with_retry_after_and_loses_nothing(server, tmp_path, data_dir):
    report = flood(tmp_path, data_dir, seconds=6, connections=512, env={"FASHION_MAX_IN_FLIGHT": "64"})
    assert report["unexpected_statuses"] == {} and report["statuses"].get("429", 0) > 0, report["statuses"]
    assert report["retry_after_missing"] == 0
    assert sum(report["socket_errors"].values()) == 0, report["socket_errors"]  # every request got its answer
    # Probes on the health port answer throughout; the API port's answer too, but in the loop's turn
    # (a timeout of 5 s may pass there: its figures are reported, not asserted).
    assert all(key.endswith(" 200") for key in report["probes_health_port"]["statuses"]), report["probes_health_port"]
    assert report["probes_health_port"]["probes"] >= 10
    assert report["recovery_s"] < float("inf")  # back to one-at-a-time latency within the 120-s hang guard
    job = report["batch_job"]
    assert (job["exit_code"], job["rows"], job["lost"], job["duplicates"]) == (0, 10_000, 0, 0), job


@pytest.mark.long
def test_a_30_second_flood_of_1024_connections(server, tmp_path, data_dir):
    """The full-length overload of the issue; ``python -m reliability overload`` records its figures."""
    report = flood(tmp_path, data_dir, seconds=30, connections=1024)
    assert report["unexpected_statuses"] == {} and report["retry_after_missing"] == 0
    assert sum(report["socket_errors"].values()) == 0
    assert all(key.endswith(" 200") for key in report["probes_health_port"]["statuses"])
    assert report["recovery_s"] < float("inf")
    assert (report["batch_job"]["lost"], report["batch_job"]["duplicates"]) == (0, 0)


def test_sigterm_finishes_requests_in_flight_then_exits_cleanly(own_server, dataset):
    report = scenarios.shutdown(own_server, dataset.test_images[:1024])
    # The worker answered in full every request it let in, and each of those answers reached its client ...
    worker = report["server_at_exit"]
    assert worker and worker["let_in"] == worker["answered"] > 0 and worker["in_progress"] == 0, report
    assert report["answers_to_clients"] == worker["answered"], report
    # ... so a request in flight at the signal either was answered 200, or got a connection error and never
    # reached the worker (a keep-alive connection closed as idle while it was on its way: the scenario's docstring).
    http_statuses = {key for key in report["in_flight_at_signal"] if key.isdigit()}
    assert http_statuses == {"200"}, report
    # New work is refused once the worker began to stop (its readiness failed).
    assert report["sent_after_readiness_failed"] and "200" not in report["sent_after_readiness_failed"], report
    assert report["exit_code"] == 0
    assert report["readiness_failed_after_s"] is not None
    assert report["readiness_failed_after_s"] <= report["exit_after_s"]


def test_a_killed_worker_fails_its_requests_fast_and_is_replaced(own_server, dataset):
    # 600 retries of at most 0.5 s: a 300-s hang guard for the worker's restart (seconds, measured).
    report = scenarios.crash(own_server, dataset.test_images[:1024], retry_attempts=600)
    # Requests the worker had not answered when it died fail (one may finish just before the kill).
    assert any(outcome != "200" for outcome in report["in_flight_outcomes"]), report
    assert report["in_flight_slowest_s"] < 30  # failed, not hung until the client's timeout
    assert report["replacement_pid"] != report["killed_pid"]
    assert report["retrying_client"]["answers"] == 16  # the project's client rode over the restart
    httpx.get(f"{own_server.url}/readyz").raise_for_status()


def test_aborted_slow_and_idle_clients_leave_no_trace(own_server, tmp_path):
    report = scenarios.misbehaving_clients(own_server, tmp_path, aborted=100, slow=20, idle=300, hold_s=3)
    assert set(report["requests_meanwhile"]) == {"200"}, report["requests_meanwhile"]
    before, after = report["vitals_before"], report["vitals_after"]
    assert after["open_fds"] <= before["open_fds"] + 2, report
    assert after["rss_mib"] < before["rss_mib"] + 100, report


def test_api_fuzzed_from_its_openapi_schema_never_answers_5xx(server, tmp_path):
    """schemathesis generates valid and invalid requests for every operation in /docs.json."""
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(cli), "run", f"{server}/docs.json", "--checks", "not_a_server_error", "--max-examples", "40",
         "--phases", "coverage,fuzzing", "--mode", "all", "--workers", "1", "--seed", "1",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
