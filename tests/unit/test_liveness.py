"""Liveness fails when the event loop is stuck, and recovers when it runs again (service.health.Heartbeat)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from benchmark.harness import free_port
from service.health import Heartbeat, start_health_server

WAIT_S = 20  # hang guard for each state change; each takes well under a second


def poll_livez(url: str, status: int) -> dict:
    """The /livez body once it answers ``status``; fails after WAIT_S saying what it waited for."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        reply = httpx.get(f"{url}/livez", timeout=5)
        if reply.status_code == status:
            return reply.json()
        time.sleep(0.02)
    raise AssertionError(f"/livez did not answer {status} within {WAIT_S} s")


def test_livez_fails_while_the_loop_is_blocked_and_recovers():
    heartbeat = Heartbeat(stale_after=0.3, interval=0.05)
    loop = asyncio.new_event_loop()
    started, release = threading.Event(), threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        heartbeat.start()
        started.set()
        await stop.wait()
        heartbeat.task.cancel()

    runner = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    runner.start()
    port = free_port()
    server = start_health_server("127.0.0.1", port, lambda: None, heartbeat=heartbeat)
    url = f"http://127.0.0.1:{port}"
    try:
        assert started.wait(WAIT_S), "the loop did not start"
        alive = poll_livez(url, 200)
        assert alive["live"] is True and alive["reason"] is None and 0 <= alive["heartbeat_age_s"] <= 0.3
        assert alive["event_loop"] == f"{type(loop).__module__}.{type(loop).__qualname__}"  # which loop beats
        loop.call_soon_threadsafe(release.wait, WAIT_S)  # a blocking call on the loop, as a stuck handler makes
        body = poll_livez(url, 503)
        assert body["live"] is False and "event loop has not run" in body["reason"]
        release.set()
        poll_livez(url, 200)
    finally:
        release.set()
        server.shutdown()
        loop.call_soon_threadsafe(stop.set)
        runner.join(WAIT_S)
        loop.close()


def test_a_loop_that_has_not_started_is_not_called_stuck():
    assert Heartbeat(stale_after=0.01).stuck_reason() is None
