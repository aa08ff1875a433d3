"""service.launch without a real server: private homes, and waits that fail clearly rather than hang."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.launch import STOPPED_LINE, Server, free_port, private_home


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
