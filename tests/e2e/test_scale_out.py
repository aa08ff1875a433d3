"""Two ``bentoml serve`` replicas behind a real haproxy (tests/scale_out.py, docs/scale-out.md).

The batch CLI's job over the 10,000 test images goes through the balancer while one replica is
drained (SIGTERM) and restarted; dataset tasks are submitted, polled and fetched through it. The
throughput of one against two replicas is `make scale-out`, not a test. Skipped, saying so, where
haproxy is not installed (.ci/run installs it).
"""

from __future__ import annotations

import csv
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmark.harness import Server
from tests.helpers import npy, wait_until
from tests.scale_out import RETRIED, Balancer, Replica, run_batch, start_replica

BACKEND = "onnx-torch"
ENV = {"FASHION_BACKENDS": "onnx-torch,onnx-tf"}  # the two quick-loading backends: replicas start sooner
BATCH = 100  # images per request: 100 requests, so the drain and the restart land mid-job
DRAIN_AT, RESUME_AT = 20, 60  # requests: SIGTERM after the 20th starts; the 60th on wait for the restart


@dataclass
class Cluster:
    balancer: Balancer
    replicas: list[Replica]
    servers: dict[str, Server]
    workdir: Path
    models: Path

    def restart(self, replica: Replica) -> None:
        self.servers[replica.name] = start_replica(self.workdir, replica, ENV, self.models)


def all_up(replicas):
    return lambda states: all(states.get(r.name) == "UP" for r in replicas)


@pytest.fixture(scope="module")
def cluster(exported, bentoml_home, tmp_path_factory):
    """Two replicas over the quick models, both UP behind haproxy."""
    if not (shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")):
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run does this)")
    from export.store import register_model

    for model_dir in exported.values():
        register_model(model_dir)
    workdir = tmp_path_factory.mktemp("scale-out")
    replicas = [Replica.on_free_ports(f"r{i}") for i in range(2)]
    servers = {r.name: start_replica(workdir, r, ENV, bentoml_home / "models") for r in replicas}
    balancer = None
    try:
        for server in servers.values():
            server.wait_ready(300)  # hang guard: each loads two ONNX models, seconds
        balancer = Balancer.start(workdir / "haproxy", replicas)
        balancer.wait_for(all_up(replicas), "both replicas UP in haproxy", 60)
        yield Cluster(balancer, replicas, servers, workdir, bentoml_home / "models")
    finally:
        if balancer is not None:
            balancer.stop()
        for server in servers.values():
            server.stop()


def paused(drain: threading.Event, rejoined: threading.Event):
    """Wrap the job's classify: request DRAIN_AT sets ``drain``; requests from RESUME_AT on wait for ``rejoined``."""
    calls, lock = [0], threading.Lock()

    def wrap(classify):
        def run(pixels):
            with lock:  # the job's classifier threads each take a request number
                n, calls[0] = calls[0], calls[0] + 1
            if n == DRAIN_AT:
                drain.set()
            if n >= RESUME_AT and not rejoined.wait(600):  # hang guard: a replica restarts in under a minute
                raise TimeoutError("the drained replica did not rejoin within 600 s")
            return classify(pixels)
        return run

    return wrap


def test_a_batch_through_the_balancer_survives_a_drain_and_restart(cluster, data_dir, tmp_path):
    images = next(data_dir.glob("t10k-images-idx3-ubyte*"))
    out, drain, rejoined = tmp_path / "out.csv", threading.Event(), threading.Event()
    drained = cluster.replicas[0]
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(run_batch, cluster.balancer.url, images, out, BATCH, BACKEND, paused(drain, rejoined))
        try:
            # hang guard 300 s; a job that fails before its 20th request says why at once
            wait_until(lambda: drain.is_set() or job.done(), "the job's 20th request (or its end)", 300)
            assert drain.is_set(), f"the job ended before its 20th request: {job.exception()!r}"
            # SIGTERM with requests in flight: they finish, new connections are refused and haproxy sends
            # them to the other replica; the replica exits 0.
            assert cluster.servers[drained.name].stop(60) == 0
            cluster.balancer.wait_for(lambda st: st[drained.name].startswith("DOWN"), "the drained replica DOWN",
                                      60)
            cluster.restart(drained)
            cluster.balancer.wait_for(all_up(cluster.replicas), "the restarted replica UP again", 300)
            rejoined_at = cluster.balancer.log.stat().st_size
        finally:
            rejoined.set()
        summary = job.result(timeout=600)  # hang guard: seconds of work left

    assert summary.exit_code == 0 and summary.ok == summary.total == 10_000, summary.line()
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == 10_000  # nothing lost, nothing twice
    requests = [r for r in cluster.balancer.requests() if r[0] == "replicas"]
    statuses = {status for _, _, status, _, _ in requests}
    assert all(200 <= s < 300 or s in RETRIED for s in statuses), statuses
    rejected = sum(status in RETRIED for _, _, status, _, _ in requests)
    assert rejected <= summary.retried  # every 429/502/503 was resent (the job has every row)
    assert {server for _, server, _, _, _ in requests} >= {"r0", "r1"}  # spread over both
    after = cluster.balancer.requests(rejoined_at)
    assert any(server == drained.name and 200 <= status < 300 for _, server, status, _, _ in after), \
        "the restarted replica took no requests"


def test_dataset_tasks_are_polled_and_fetched_through_the_balancer(cluster, dataset):
    url = cluster.balancer.url
    with httpx.Client(base_url=url, timeout=60) as client:
        task_ids = []
        for backend in ("onnx-torch", "onnx-tf"):
            reply = client.post("/classify_dataset/submit", content=npy(dataset.test_images[:2000]),
                                params={"backend": backend}, headers={"Content-Type": "application/x-npy"})
            assert reply.status_code == 200, reply.text
            task_ids.append(reply.json()["task_id"])
        for task_id in task_ids:
            for _ in range(1200):  # hang guard: 2,000 images take well under a second per poll round
                view = client.get("/classify_dataset/progress", params={"task_id": task_id})
                assert view.status_code == 200, view.text  # another replica would answer 404
                if view.json()["status"] != "in_progress":
                    break
            assert view.json()["status"] == "completed", view.json()
            result = client.get("/classify_dataset/get", params={"task_id": task_id})
            assert result.status_code == 200, result.text
            assert result.json()["count"] == 2000 and np.all(np.array(result.json()["class_ids"]) < 10)
    served = {server for backend, server, _, _, uri in cluster.balancer.requests()
              if backend == "tasks" and uri.startswith("/classify_dataset/")}
    assert len(served) == 1, served  # one client address, one replica: the affinity that keeps a task's state
