"""The lab's harness without a real server: private homes, waits that fail clearly rather than hang, the one
percentile and the one results writer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmark.harness import Server, free_port, percentile, private_home, write_results
from service.config import STOPPED_LINE

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def test_a_private_home_links_the_store_models(tmp_path):
    models = tmp_path / "store" / "models"
    models.mkdir(parents=True)
    first, second = private_home(tmp_path, models), private_home(tmp_path, models)
    assert first != second and (first / "models").resolve() == (second / "models").resolve() == models.resolve()


def test_waiting_on_a_server_that_exited_says_so(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(RuntimeError, match="exited with 3"):
        Server(proc, f"http://127.0.0.1:{free_port()}", tmp_path / "log").wait_ready(timeout=30)


def test_waiting_past_the_timeout_names_what_was_awaited(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{free_port()}", tmp_path / "log")
    try:
        with pytest.raises(TimeoutError, match=r"/readyz did not answer 200 within 0\.5 s"):
            server.wait_ready(timeout=0.5)
    finally:
        assert server.stop(timeout=10) == -15  # SIGTERM ended it


def test_the_workers_stop_line_is_read_back_from_the_log(tmp_path):
    log = tmp_path / "log"
    server = Server(subprocess.Popen([sys.executable, "-c", "pass"]), "http://127.0.0.1:1", log)
    server.proc.wait()
    log.write_text("starting\n")
    assert server.stopped_counts() is None
    # a worker replaced after a crash logs again: the last line is the one that counts
    log.write_text(f"INFO {STOPPED_LINE % (3, 2, 1)}\nrestarted\nINFO {STOPPED_LINE % (1_204, 1_204, 0)}\n")
    assert server.stopped_counts() == {"let_in": 1_204, "answered": 1_204, "in_progress": 0}


def test_the_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1..100: the p-th percentile is p itself
    assert [percentile(values, q) for q in (1, 50, 99, 100)] == [1.0, 50.0, 99.0, 100.0]
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0 and percentile([2.0], 99) == 2.0


def test_results_are_written_as_markdown_and_json_beside_it(tmp_path):
    path = write_results("study-x", "# Study\n\n| a |", {"rows": [1, 2]}, folder=tmp_path)
    assert path == tmp_path / "study-x.md" and path.read_text() == "# Study\n\n| a |\n"
    assert json.loads((tmp_path / "study-x.json").read_text()) == {"rows": [1, 2]}
    assert write_results("plain.txt", "two lines\n", folder=tmp_path).read_text() == "two lines\n"
