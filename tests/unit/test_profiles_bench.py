"""benchmark.profiles finds the BentoML worker below ``bentoml serve`` and reads its resident memory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmark.profiles import process_tree, rss_mb, worker_pid

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product

# A parent that starts a child named like BentoML's worker (``python -m _bentoml_impl.worker.service ...``); the
# name is split in the parent's own command line, which must not match.
PARENT = ("import subprocess, sys, time\n"
          "name = '_bentoml_impl.' + 'worker'\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', name])\n"
          "print(child.pid, flush=True)\n"
          "time.sleep(60)\n")


@pytest.fixture
def parent():
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    yield proc, child
    for pid in (child, proc.pid):
        os.kill(pid, 9)
    proc.wait(10)


def test_the_worker_is_found_below_the_server_and_has_resident_memory(parent):
    proc, child = parent
    assert process_tree(proc.pid) == [proc.pid, child]
    assert worker_pid(proc.pid) == child
    assert rss_mb(child) > 1


def test_a_server_without_a_worker_is_an_error_and_an_ended_process_has_no_memory():
    lone = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(RuntimeError, match="no BentoML worker"):
            worker_pid(lone.pid)
    finally:
        lone.kill()
        lone.wait(10)
    assert rss_mb(lone.pid) == 0.0
