"""Reliability scenarios against a real server: overload, shutdown, crash, misbehaving clients, soak.

Each function hurts a running :class:`~benchmark.harness.Server` in one way and
returns the figures it measured as a plain dict (requests sent, answers by
status, items lost, duplicates, time to recover). Tests assert on them with short
durations; ``python -m benchmark.reliability`` runs the full lengths and writes results/.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmark.harness import REPO, Server, percentile, run_wrk
from benchmark.openloop import open_loop
from benchmark.reliability.probes import (
    BOUNDARY,
    CONTENT_TYPE,
    Prober,
    baseline_latency,
    host_steal_seconds,
    recovery_seconds,
    upload_body,
)
from clients.client import npy_bytes

ALLOWED_UNDER_LOAD = frozenset({"200", "429", "503", "504"})


def sustainable_rate(server: Server, workdir: Path, seconds: float = 5.0) -> float:
    """Requests per second the service answers with 200 at 32 clients (its measured capacity)."""
    body_file, _ = upload_body(workdir)
    run_wrk(f"{server.url}/classify", 32, 1, body_file, BOUNDARY)  # warm-up
    stats = run_wrk(f"{server.url}/classify", 32, seconds, body_file, BOUNDARY)
    return stats["statuses"].get("200", 0) / (stats["duration_us"] / 1e6)


def start_batch_job(url: str, images: Path, out: Path) -> subprocess.Popen:
    """The batch CLI over an IDX/.npy file through the service, as a user would run it."""
    return subprocess.Popen(
        [sys.executable, "-m", "clients", "--url", url, "batch", str(images), "--out", str(out), "--quiet",
         "--retries", "20"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def check_batch_output(out: Path, expected_items: int) -> dict[str, int]:
    """Rows, distinct ids, ids lost and duplicated in a batch job's CSV (none written: all lost)."""
    ids = []
    if out.exists():
        with out.open() as fh:
            ids = [row["id"] for row in csv.DictReader(fh) if row["class_id"] != ""]
    return {"rows": len(ids), "distinct": len(set(ids)), "lost": expected_items - len(set(ids)),
            "duplicates": len(ids) - len(set(ids))}


def overload(server: Server, workdir: Path, seconds: float = 30.0, connections: int = 1024,
             batch_input: Path | None = None, batch_items: int = 0, probe_timeout_s: float = 5.0,
             recovery_limit_s: float = 30.0) -> dict[str, Any]:
    """Flood ``/classify`` with ``connections`` clients that never pause, for ``seconds``.

    Meanwhile: health probes every 0.2 s (each given ``probe_timeout_s``) and (with ``batch_input``) the
    batch CLI over the same server. After: seconds until one-at-a-time latency is back to normal (``inf``
    if not within ``recovery_limit_s``).
    """
    body_file, body = upload_body(workdir)
    baseline = baseline_latency(server.url, body)
    capacity = sustainable_rate(server, workdir)
    before = server.vitals()
    result: dict[str, Any] = {}
    with Prober((server.url, server.health_url), timeout=probe_timeout_s) as prober:
        flood_thread = threading.Thread(target=lambda: result.update(flood=run_wrk(
            f"{server.url}/classify", connections, seconds, body_file, BOUNDARY, timeout=60, threads=2)))
        flood_thread.start()
        job = None
        if batch_input is not None:
            time.sleep(min(3.0, seconds / 4))  # start once the flood is at full strength
            job = start_batch_job(server.url, batch_input, workdir / "overload-batch.csv")
        flood_thread.join()
        # A one-at-a-time request now takes at most this long on a recovered server.
        normal_s = max(3 * baseline["p50_s"], baseline["p99_s"])
        recovery = recovery_seconds(server.url, body, normal_s, limit_s=recovery_limit_s)
        batch: dict[str, Any] = {}
        if job is not None:
            output, _ = job.communicate(timeout=600)
            batch = {"exit_code": job.returncode, **check_batch_output(workdir / "overload-batch.csv", batch_items),
                     "output_tail": output[-400:]}
    flood = result["flood"]
    duration = flood["duration_us"] / 1e6
    return {
        "seconds": round(duration, 1), "connections": connections,
        "sustainable_rps": round(capacity), "offered_rps": round(flood["requests"] / duration),
        "answered_200_rps": round(flood["statuses"].get("200", 0) / duration),
        "responses": flood["requests"], "statuses": flood["statuses"],
        "unexpected_statuses": {k: v for k, v in flood["statuses"].items() if k not in ALLOWED_UNDER_LOAD},
        "socket_errors": flood["errors"], "retry_after_missing": flood["retry_after_missing"],
        "p50_ms": flood["p50_us"] / 1e3, "p99_ms": flood["p99_us"] / 1e3, "max_ms": flood["max_us"] / 1e3,
        "probes": prober.summary(server.url), "probes_health_port": prober.summary(server.health_url),
        "baseline_p50_ms": baseline["p50_s"] * 1e3, "normal_ms": normal_s * 1e3,
        "recovery_s": recovery, "batch_job": batch, "vitals_before": before, "vitals_after": server.vitals(),
    }


async def post_npy(client: httpx.AsyncClient, url: str, body: bytes) -> tuple[int | str, float, float]:
    """(status or exception name, start, end) of one ``/classify_array`` request."""
    start = time.monotonic()
    try:
        status: int | str = (await client.post(f"{url}/classify_array", content=body,
                                               headers={"Content-Type": "application/x-npy"})).status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return status, start, time.monotonic()


def worker_totals(server: Server) -> dict[str, int]:
    """The worker's request counts now, from its probe port's ``/requestz`` (service.serving.InFlight.totals)."""
    if not server.health_url:
        raise ValueError(f"{server.url} has no probe port; start it with benchmark.harness.launch")
    reply = httpx.get(f"{server.health_url}/requestz", timeout=30)
    reply.raise_for_status()
    return reply.json()


def since(before: dict[str, int], after: dict[str, int] | None) -> dict[str, int] | None:
    """The counts added between two readings (``None`` when the worker logged none as it stopped)."""
    if after is None:
        return None
    return {"let_in": after["let_in"] - before["let_in"], "answered": after["answered"] - before["answered"],
            "in_progress": after["in_progress"]}


def shutdown(server: Server, batch_pixels: np.ndarray, clients: int = 16,
             hang_guard_s: float = 120.0) -> dict[str, Any]:
    """SIGTERM to ``bentoml serve`` while ``clients`` keep sending large requests.

    The signal goes out once the first answer has come back (so requests are in flight), and the clients
    keep sending until the process has exited: requests sent after readiness failed are then seen however
    long the worker takes to stop. ``hang_guard_s`` bounds each wait.

    A request the client sent before the signal can still fail with a connection error and no answer: uvicorn, as
    it stops, closes each keep-alive connection that is idle, and a client's next request may be on its way there,
    unread (HTTP/1.1's known race; a client retries such a request, ours does). The client cannot tell that from a
    request the server dropped; the worker's last log line can (service.service.report_requests): how many
    requests it let in and how many it answered in full. Every answer the clients got is one of those.

    Returns the answers of requests sent before and after the signal, the worker's own counts, when readiness
    first failed and when the process exited, and its exit code.
    """
    body = npy_bytes(batch_pixels)
    outcomes: list[tuple[float, float, int | str]] = []
    probes: list[tuple[float, int | str]] = []
    # The worker's counts so far (readiness checks while it loaded): the scenario's own are what it adds.
    before = worker_totals(server)

    async def run() -> tuple[float, float]:
        answered, exited_event = asyncio.Event(), asyncio.Event()
        deadline = time.monotonic() + 3 * hang_guard_s

        async def keep_sending(client: httpx.AsyncClient) -> None:
            while not exited_event.is_set() and time.monotonic() < deadline:
                status, start, end = await post_npy(client, server.url, body)
                outcomes.append((start, end, status))
                answered.set()

        async def probe(client: httpx.AsyncClient) -> None:
            while not exited_event.is_set() and time.monotonic() < deadline:
                try:
                    status: int | str = (await client.get(f"{server.url}/readyz", timeout=1)).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                probes.append((time.monotonic(), status))
                await asyncio.sleep(0.02)  # probe pacing, not synchronisation

        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients + 4)) as client:
            tasks = [asyncio.create_task(keep_sending(client)) for _ in range(clients)]
            tasks.append(asyncio.create_task(probe(client)))
            try:
                await asyncio.wait_for(answered.wait(), hang_guard_s)
            except TimeoutError:
                raise TimeoutError(f"no answer from {server.url} within {hang_guard_s}s before SIGTERM") from None
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(server.proc.wait, hang_guard_s)
            finally:
                exited = time.monotonic()
                exited_event.set()
                await asyncio.gather(*tasks)
            return signalled, exited

    signalled, exited = asyncio.run(run())

    def tally(rows: list[tuple[float, float, int | str]]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for *_, status in rows:
            counts[str(status)] = counts.get(str(status), 0) + 1
        return counts

    in_flight = [o for o in outcomes if o[0] < signalled < o[1]]
    not_ready = [t for t, status in probes if t >= signalled and status != 200]
    stopped = min(not_ready) if not_ready else float("inf")
    return {
        "exit_code": server.proc.returncode, "exit_after_s": exited - signalled,
        "server_at_exit": since(before, server.stopped_counts()),
        "answers_to_clients": sum(isinstance(status, int) for *_, status in outcomes),
        "in_flight_at_signal": tally(in_flight), "sent_before_signal": tally([o for o in outcomes if o[0] < signalled]),
        "sent_after_signal": tally([o for o in outcomes if o[0] >= signalled]),
        # The arbiter passes the signal on to the worker: requests in that gap are still served.
        "sent_after_readiness_failed": tally([o for o in outcomes if o[0] >= stopped]),
        "readiness_failed_after_s": (min(not_ready) - signalled) if not_ready else None,
        "last_answer_after_s": max(o[1] for o in outcomes) - signalled,
    }


def crash(server: Server, batch_pixels: np.ndarray, in_flight: int = 8, timeout: float = 30.0,
          retry_attempts: int = 60) -> dict[str, Any]:
    """SIGKILL the worker while ``in_flight`` clients keep requests running; then keep a retrying client going.

    Each client sends its next request as soon as the last is answered, and the kill comes once the worker
    has answered one: so requests are in the worker when it dies, on a fast machine as on a slow one.
    """
    from clients.client import FashionClient, RetryPolicy

    body = npy_bytes(batch_pixels)
    worker = server.worker()
    killed_at = [float("inf")]

    async def keep_sending(client: httpx.AsyncClient, answered: asyncio.Event,
                           rows: list[tuple[int | str, float, float]]) -> None:
        """Send one request after another until one ends after the kill."""
        while True:
            rows.append(await post_npy(client, server.url, body))
            answered.set()
            if rows[-1][2] >= killed_at[0]:
                return

    async def run() -> tuple[list[tuple[int | str, float]], float]:
        async with httpx.AsyncClient(timeout=timeout) as client:
            answered = asyncio.Event()
            rows: list[list[tuple[int | str, float, float]]] = [[] for _ in range(in_flight)]
            tasks = [asyncio.create_task(keep_sending(client, answered, mine)) for mine in rows]
            await asyncio.wait_for(answered.wait(), timeout)
            killed_at[0] = time.monotonic()
            worker.send_signal(signal.SIGKILL)
            await asyncio.gather(*tasks)
            # In flight at the kill: sent before it, ended after it.
            hit = [(status, end - start) for mine in rows for status, start, end in mine
                   if start < killed_at[0] <= end]
            return hit, killed_at[0]

    answers, killed = asyncio.run(run())
    # A client that retries (the project's own) sends at once and rides over the restart.
    retried: dict[str, Any] = {}

    def retrying_client() -> None:
        retry = RetryPolicy(attempts=retry_attempts, max_delay=0.5)
        with FashionClient(server.url, timeout=timeout, retry=retry) as client:
            retried["answers"] = len(client.classify_array(batch_pixels[:16]))
            retried["retries"] = client.retry.retried
            retried["after_s"] = time.monotonic() - killed

    thread = threading.Thread(target=retrying_client)
    thread.start()
    server.wait_ready()
    ready_after = time.monotonic() - killed
    thread.join()
    return {
        "killed_pid": worker.pid, "replacement_pid": server.worker().pid,
        "in_flight_outcomes": [str(status) for status, _ in answers],
        "in_flight_slowest_s": max((seconds for _, seconds in answers), default=0.0),
        "ready_again_after_s": ready_after, "retrying_client": retried,
    }


def misbehaving_clients(server: Server, workdir: Path, aborted: int = 200, slow: int = 50, idle: int = 1000,
                        hold_s: float = 10.0) -> dict[str, Any]:
    """Aborted uploads, slow senders and idle connections; the server must stay live and clean up.

    Vital signs (open files, memory, connections) are read before, while the clients
    misbehave, and after they have gone.
    """
    _, body = upload_body(workdir)
    host, port = server.url.removeprefix("http://").split(":")
    head = (f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body) * 100}\r\n\r\n").encode()
    with httpx.Client(timeout=30) as client:
        for _ in range(50):
            client.post(f"{server.url}/classify", content=body, headers={"Content-Type": CONTENT_TYPE})
    before = server.vitals()

    for _ in range(aborted):  # half a body, then gone
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(head + body)
    sockets: list[socket.socket] = []
    for _ in range(idle):  # connected, silent
        sockets.append(socket.create_connection((host, int(port))))
    slow_socks = [socket.create_connection((host, int(port))) for _ in range(slow)]
    for sock in slow_socks:
        sock.sendall(head)
    live: list[tuple[float, int | str]] = []
    deadline = time.monotonic() + hold_s
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            for sock in slow_socks:  # a byte at a time, never finishing
                with contextlib.suppress(OSError):  # the server may have closed it: that is fine
                    sock.sendall(b"x")
            start = time.perf_counter()
            try:
                status: int | str = client.post(f"{server.url}/classify", content=body,
                                                headers={"Content-Type": CONTENT_TYPE}).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            live.append((time.perf_counter() - start, status))
            time.sleep(0.2)
    during = server.vitals()
    closed_by_server = sum(1 for sock in sockets if _closed_by_peer(sock))
    for sock in sockets + slow_socks:
        sock.close()
    after = _settle(server, before)
    statuses: dict[str, int] = {}
    for _, status in live:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "aborted_uploads": aborted, "slow_senders": slow, "idle_connections": idle, "hold_s": hold_s,
        "requests_meanwhile": statuses, "meanwhile_p50_ms": statistics.median(s for s, _ in live) * 1e3,
        "meanwhile_max_ms": max(s for s, _ in live) * 1e3, "idle_closed_by_server": closed_by_server,
        "vitals_before": before, "vitals_during": during, "vitals_after": after,
    }


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _settle(server: Server, before: dict[str, float], wait_s: float = 15.0) -> dict[str, float]:
    """Vital signs once open files are back to ``before`` (or after ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while True:
        vitals = server.vitals()
        if vitals["open_fds"] <= before["open_fds"] or time.monotonic() > deadline:
            return vitals
        time.sleep(0.25)


def soak(server: Server, workdir: Path, minutes: float = 30.0, load: float = 0.7, window_s: float = 60.0,
         warmup_windows: int = 2) -> dict[str, Any]:
    """``load`` x capacity, open loop (a request every 1/rate s whatever the server does), for ``minutes``.

    One row per window: answers by status, p50/p99 latency from the scheduled send
    time, the worker's memory and open files.
    """
    capacity = sustainable_rate(server, workdir, seconds=10)
    rate = load * capacity
    _, body = upload_body(workdir)
    rows = []
    cpu_before, steal_before = server.vitals()["cpu_s"], host_steal_seconds()
    for index in range(max(1, round(minutes * 60 / window_s))):
        stats = open_loop(f"{server.url}/classify", body, CONTENT_TYPE, rate, window_s, connections=64)
        vitals, steal = server.vitals(), host_steal_seconds()
        # Server CPU per request tells a slower server from a busier machine (steal: the host's other guests).
        rows.append({"window": index, "sent": stats["sent"], "statuses": stats["statuses"],
                     "p50_ms": stats["p50_s"] * 1e3, "p99_ms": stats["p99_s"] * 1e3,
                     "server_cpu_us_per_request": (vitals["cpu_s"] - cpu_before) / stats["sent"] * 1e6,
                     "host_steal_s": steal - steal_before,
                     "generator_cpu_cores": stats["generator_cpu_cores"], **vitals})
        cpu_before, steal_before = vitals["cpu_s"], steal
        print(f"  window {index}: {rows[-1]}", flush=True)
    steady = rows[warmup_windows:] or rows
    first, last = steady[: max(1, len(steady) // 6)], steady[-max(1, len(steady) // 6):]
    errors = sum(count for row in rows for status, count in row["statuses"].items() if status != "200")
    p99 = [row["p99_ms"] for row in steady]
    return {
        "minutes": minutes, "capacity_rps": round(capacity), "rate_rps": round(rate),
        "sent": sum(row["sent"] for row in rows), "errors": errors,
        "memory_growth": statistics.mean(r["rss_mib"] for r in last) / statistics.mean(r["rss_mib"] for r in first) - 1,
        "p99_drift": statistics.mean(r["p99_ms"] for r in last) / statistics.mean(r["p99_ms"] for r in first) - 1,
        "p99_ms_median": statistics.median(p99), "p99_ms_max": max(p99), "p99_ms_p90": percentile(p99, 90),
        "windows": rows,
    }


__all__ = ["crash", "misbehaving_clients", "overload", "shutdown", "soak", "sustainable_rate"]
