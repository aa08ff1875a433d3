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


def test_the_floor_is_reported_beside_the_profiles_and_not_as_one():
    from benchmark.profiles import FLOOR, render, summarise

    built = [{"profile": name, "bentofile": f"{name}.yaml", "bento": f"b:{name}", "backends": ["onnx-torch"],
              "requirements": 10, "venv_mb": size} for name, size in (("full", 1000.0), ("onnx", 50.0))]
    starts = [{"profile": name, "rep": rep, "ready_s": ready + rep / 10, "rss_ready_mb": 100.0,
               "rss_after_load_mb": 110.0, "wrk": []}
              for rep in range(3) for name, ready in (("full", 6.0), ("onnx", 2.0), (FLOOR, 1.5))]
    profiles = summarise(built, starts)
    assert [p["profile"] for p in profiles] == ["full", "onnx"]
    assert profiles[0]["floor"]["ready_s_median"] == 1.6 and profiles[0]["floor"]["ready_s_range"] == [1.5, 1.7]
    text = render({"machine": "m", "argv": [], "when": "now", "reps": 3, "cores": 2, "seconds": 0,
                   "profiles": profiles})
    assert "ready in 1.60 s (1.50-1.70)" in text and "ready 0.50 s after the floor" in text
    assert "the floor alone is 0.262 of the full" in text and "leaves 0.43 s above the floor" in text
