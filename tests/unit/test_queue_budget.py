"""The batcher's wait budget: a request whose turn comes too late is refused (503 upstream), not run."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import MicroBatcher, OverloadedError
from service.config import ConfigError, ServiceConfig


class GatedModel:
    """Logits from each image's first pixel; each call says it started, then waits for the gate."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()
        self.calls: list[int] = []

    def __call__(self, backend: str, pixels: np.ndarray, score: bool = False) -> np.ndarray:
        self.started.set()
        assert self.gate.wait(10), "the test never opened the gate"
        self.calls.append(len(pixels))
        logits = np.zeros((len(pixels), 10), np.float32)
        logits[:, 0] = pixels[:, 0, 0]
        return logits


def one_image(first: int) -> np.ndarray:
    pixels = np.zeros((1, 28, 28), np.uint8)
    pixels[0, 0, 0] = first
    return pixels


def test_a_request_that_waited_past_the_budget_is_refused_and_a_fresh_one_runs():
    model, now = GatedModel(), [0.0]
    batcher = MicroBatcher(model, max_wait_s=1.0, clock=lambda: now[0])

    async def scenario():
        busy = asyncio.create_task(batcher.predict("a", one_image(1)))
        assert await asyncio.to_thread(model.started.wait, 10), "the first batch never started"
        stale = asyncio.create_task(batcher.predict("a", one_image(2)))
        await asyncio.sleep(0)  # queued at t=0
        now[0] = 1.5  # its turn comes 1.5 s later, past the 1 s budget
        fresh = asyncio.create_task(batcher.predict("a", one_image(3)))
        await asyncio.sleep(0)
        model.gate.set()
        return await asyncio.gather(busy, stale, fresh, return_exceptions=True)

    busy, stale, fresh = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert busy[:, 0].tolist() == [1] and fresh[:, 0].tolist() == [3]
    assert isinstance(stale, OverloadedError) and "1000 ms budget" in str(stale)
    assert model.calls == [1, 1]  # the stale request never reached the model


def test_queue_budget_setting(monkeypatch):
    monkeypatch.setenv("FASHION_QUEUE_BUDGET_MS", "250")
    assert ServiceConfig.from_env().queue_budget_s == 0.25
    monkeypatch.setenv("FASHION_QUEUE_BUDGET_MS", "0")
    assert ServiceConfig.from_env().queue_budget_s is None
    monkeypatch.setenv("FASHION_QUEUE_BUDGET_MS", "-1")
    with pytest.raises(ConfigError):
        ServiceConfig.from_env()
