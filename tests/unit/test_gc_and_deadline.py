"""The collector record, the freeze, and the per-request deadline that leaves no timer behind."""

from __future__ import annotations

import asyncio
import gc

import pytest

from service.config import ConfigError, ServiceConfig, parse_switch
from service.gcstats import GCRecorder, census
from service.seams import DeadlineMiddleware


def test_recorder_times_every_pass_by_generation():
    recorder = GCRecorder().install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        recorder.uninstall()
    snap = recorder.snapshot()
    young, full = snap["generations"][0], snap["generations"][2]
    assert young["passes"] >= 1 and full["passes"] >= 1
    assert sum(full["pauses_ms"].values()) == full["passes"] and full["max_ms"] <= full["total_ms"]
    recorder.reset()
    assert recorder.snapshot()["generations"][2]["passes"] == 0


def test_census_counts_tracked_objects_by_type():
    class Marker:
        pass

    kept = [Marker() for _ in range(5000)]
    counted = census(top=50)
    assert counted["by_type"]["Marker"] >= len(kept) and counted["tracked_objects"] >= len(kept)


async def call(app, path="/x"):
    """Drive an ASGI app with one GET; returns the messages it sent."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
    return sent


async def answer_after(delay_s: float, scope, receive, send):
    await asyncio.sleep(delay_s)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(delay_s)  # after the first byte no limit applies
    await send({"type": "http.response.body", "body": b"ok"})


async def start_then_finish_after(delay_s: float, scope, receive, send):
    """Starts the response before the loop turns at all, then finishes it ``delay_s`` seconds later."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(delay_s)
    await send({"type": "http.response.body", "body": b"ok"})


def timers(loop) -> int:
    """Timers still scheduled on the loop (asyncio's default loop keeps them in ``_scheduled``)."""
    return sum(not handle.cancelled() for handle in loop._scheduled)


def test_deadline_answers_504_when_the_response_does_not_start_in_time():
    app = DeadlineMiddleware(lambda *a: answer_after(5.0, *a), timeout=0.05)
    sent = asyncio.run(asyncio.wait_for(call(app), 10))
    assert sent[0]["status"] == 504 and b"0.05 seconds" in sent[1]["body"]


def test_deadline_leaves_no_timer_behind_a_finished_request():
    async def scenario():
        app = DeadlineMiddleware(lambda *a: answer_after(0.0, *a), timeout=30)
        before = timers(asyncio.get_running_loop())
        replies = [await call(app) for _ in range(100)]
        return replies, timers(asyncio.get_running_loop()) - before

    replies, left = asyncio.run(scenario())
    assert all(r[0]["status"] == 200 and r[1]["body"] == b"ok" for r in replies)
    assert left == 0  # BentoML's TimeoutMiddleware leaves one 30 s timer per request here


def test_deadline_only_limits_the_first_byte():
    # The start is sent in the same step of the loop that armed the deadline, so no stall of this
    # process can make it late; the body comes after the 0.05 s timer would have fired, and the loop
    # runs due timers in order, so a deadline still armed would always cut it off. (Starting after a
    # 0.1 s sleep under a 0.15 s limit failed whenever the process got no CPU across 0.1-0.15 s.)
    app = DeadlineMiddleware(lambda *a: start_then_finish_after(0.1, *a), timeout=0.05)
    sent = asyncio.run(asyncio.wait_for(call(app), 10))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"


def test_gc_freeze_switch(monkeypatch):
    assert parse_switch("ON") and not parse_switch("0")
    with pytest.raises(ValueError):
        parse_switch("maybe")
    monkeypatch.setenv("FASHION_GC_FREEZE", "0")
    assert ServiceConfig.from_env().gc_freeze is False
    monkeypatch.setenv("FASHION_GC_FREEZE", "sometimes")
    with pytest.raises(ConfigError):
        ServiceConfig.from_env()


def test_health_port_serves_the_gc_pages():
    import httpx

    from benchmark.harness import free_port
    from service.health import start_health_server

    recorder = GCRecorder().install()
    port = free_port()
    server = start_health_server("127.0.0.1", port, lambda: None, {"/gcz": recorder.snapshot, "/gcz/census": census})
    try:
        gc.collect()
        snap = httpx.get(f"http://127.0.0.1:{port}/gcz", timeout=10).json()
        counted = httpx.get(f"http://127.0.0.1:{port}/gcz/census", timeout=30).json()
        missing = httpx.get(f"http://127.0.0.1:{port}/nothing", timeout=10)
    finally:
        server.shutdown()
        recorder.uninstall()
    assert snap["generations"][2]["passes"] >= 1 and "frozen_objects" in snap
    assert counted["tracked_objects"] > 0 and counted["by_type"]
    assert missing.status_code == 404 and "/gcz" in missing.json()["error"]


class Cyclic:
    """Garbage only the collector frees: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


def test_the_second_freeze_sweeps_what_came_after_the_first():
    import weakref

    from service.gcstats import freeze_heap, freeze_imports

    try:
        freeze_imports()
        imported = gc.get_freeze_count()
        garbage = Cyclic()
        gone = weakref.ref(garbage)
        del garbage
        kept = [Cyclic()]
        freeze_heap()
        assert gone() is None  # made after the first freeze: swept before the second
        assert gc.get_freeze_count() > imported and kept
    finally:
        gc.unfreeze()
