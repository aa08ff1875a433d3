"""A new version promoted, then rolled back, under a 30-second wrk load at 16 connections: no failed request, every
answer from one of the two versions in the order of the switches. A real ``bentoml serve`` (the switch happens in a
worker under real traffic). The p99 with the switches beside the p99 of the same load without them is a figure, not
an assertion (a timing bound in a test is a hang guard only): the results file below reports it.

``FASHION_RELOAD_RESULTS=<file>.json`` also writes the run's timeline and figures there (results/model-reload.json
is written this way: ``FASHION_RELOAD_RESULTS=results/model-reload.json pytest tests/e2e/test_model_reload.py``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmark.harness import run_wrk, start
from service.auth import new_key
from tests.helpers import store_with

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None,
                                reason="needs wrk (apt-get install wrk); .ci/run installs it")

MODEL = "onnx-torch"
CONNECTIONS = 16
SECONDS = 30
# When, in seconds from the start of the switching run, the new version is loaded and promoted, and rolled back.
PROMOTE_AT, ROLLBACK_AT = 10.0, 20.0
BODY = {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}]}


class Prober:
    """One request at a time beside the load, recording (seconds from start, status, version) of each."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.seen: list[tuple[float, float, int, str | None]] = []
        self.stop = threading.Event()
        self.start = time.monotonic()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                sent = time.monotonic() - self.start
                reply = client.post(f"{self.url}/v2/models/{MODEL}/infer", json=BODY, headers=self.headers)
                self.seen.append((sent, time.monotonic() - self.start, reply.status_code,
                                  reply.json().get("model_version")))


def switch(url: str, headers: dict[str, str], version: str, timeline: list[dict], start: float) -> None:
    """Load ``version`` from the store and promote it at PROMOTE_AT, roll back at ROLLBACK_AT; each call's start,
    end and answer."""
    calls = ((PROMOTE_AT, "load", {"source": version, "accuracy_margin": 1}), (ROLLBACK_AT, "rollback", {}))
    with httpx.Client(timeout=120) as client:
        for at, action, parameters in calls:
            time.sleep(max(0.0, at - (time.monotonic() - start)))
            began = time.monotonic() - start
            reply = client.post(f"{url}/v2/repository/models/{MODEL}/{action}", json={"parameters": parameters},
                                headers=headers)
            timeline.append({"action": action, "start_s": round(began, 3),
                             "end_s": round(time.monotonic() - start, 3), "status": reply.status_code,
                             "answer": reply.json()})


def test_promote_and_roll_back_under_load_drop_nothing(exported, weak_export, dataset, tmp_path):
    key, entry = new_key(["inference", "admin"])
    headers = {"Authorization": f"Bearer {key}"}
    golden = tmp_path / "golden.npz"
    np.savez(golden, images=dataset.test_images[:2000], labels=dataset.test_labels[:2000])
    # The new version in the store too, registered first so that the store's latest stays the quick model.
    home = store_with({"weak": weak_export, **exported}, tmp_path)
    server = start(tmp_path, env={"FASHION_API_KEYS": entry.line(), "FASHION_BACKENDS": MODEL,
                                  "FASHION_GOLDEN_SET": str(golden)}, models=home / "models")
    body = tmp_path / "infer.json"
    body.write_text(json.dumps(BODY))
    old = json.loads((exported["torch"] / "manifest.json").read_text())["version"]
    new = json.loads((weak_export / "manifest.json").read_text())["version"]
    timeline: list[dict] = []
    try:
        server.wait_ready()
        target = f"{server.url}/v2/models/{MODEL}/infer"
        steady = run_wrk(target, CONNECTIONS, SECONDS, body, content_type="application/json",
                         header=f"Authorization: Bearer {key}")
        prober = Prober(server.url, headers)
        switcher = threading.Thread(target=switch, args=(server.url, headers, new, timeline, prober.start))
        prober.thread.start()
        switcher.start()
        switching = run_wrk(target, CONNECTIONS, SECONDS, body, content_type="application/json",
                            header=f"Authorization: Bearer {key}")
        switcher.join(120)
        prober.stop.set()
        prober.thread.join(60)
    finally:
        server.stop()
    promoted, rolled_back = (call["end_s"] for call in timeline)
    record(steady, switching, timeline, prober.seen, old, new)
    assert [(e["action"], e["status"]) for e in timeline] == [("load", 200), ("rollback", 200)], timeline
    assert set(steady["statuses"]) == {"200"} and set(switching["statuses"]) == {"200"}, switching
    assert switching["socket_errors"] == 0, switching
    for sent, answered, status, version in prober.seen:
        assert status == 200
        if answered < timeline[0]["start_s"] or sent > rolled_back:
            assert version == old, (sent, version)
        elif timeline[0]["end_s"] < sent and answered < timeline[1]["start_s"]:
            assert version == new, (sent, version)
        else:
            assert version in (old, new)
    assert {v for *_, v in prober.seen} == {old, new} and promoted < rolled_back


def record(steady: dict, switching: dict, timeline: list[dict], seen: list, old: str, new: str) -> None:
    """The run's figures and timeline, when ``FASHION_RELOAD_RESULTS`` names a file (``FASHION_RELOAD_NOTE``: a
    line about the machine during the run)."""
    path = os.environ.get("FASHION_RELOAD_RESULTS")
    if not path:
        return
    changes = [(round(answered, 3), version) for i, (_, answered, _, version) in enumerate(seen)
               if i == 0 or version != seen[i - 1][3]]
    Path(path).write_text(json.dumps({
        "command": "FASHION_RELOAD_RESULTS=results/model-reload.json pytest tests/e2e/test_model_reload.py",
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "note": os.environ.get("FASHION_RELOAD_NOTE", "")},  # e.g. whether other work shared the cores
        "load": {"connections": CONNECTIONS, "seconds": SECONDS, "route": f"/v2/models/{MODEL}/infer"},
        "versions": {"old": old, "new": new},
        "steady": steady, "switching": switching, "timeline": timeline,
        "probe_version_changes": changes, "probe_requests": len(seen),
    }, indent=2) + "\n")
