"""A lone small request runs on the event loop; anything else, and any burst, still goes through the queue."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import MicroBatcher
from service.serving import InFlight
from tests.helpers import images

WAIT_S = 5.0  # a hang guard, not a timing bound


class ThreadRecorder:
    """Logits that encode each image's first pixel; records the thread and size of every call.

    ``gate`` (open unless a test closes it) holds each call; ``entered`` is set once a call has started.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, backend: str, pixels: np.ndarray, score: bool = False) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never opened the model's gate"
        self.calls.append((threading.current_thread().name, len(pixels)))
        logits = np.zeros((len(pixels), 10), np.float32)
        logits[:, 0] = pixels[:, 0, 0]
        return logits


def on_loop(name: str) -> bool:
    return name == threading.main_thread().name  # asyncio.run runs the loop in the test's (main) thread


def test_a_lone_small_request_runs_on_the_event_loop():
    model, in_flight = ThreadRecorder(), InFlight()
    in_flight.enter(("127.0.0.1", 5000))
    in_flight.leave()
    in_flight.enter(("127.0.0.1", 5000))  # the same client's next request, nothing else in progress
    batcher = MicroBatcher(model, alone=in_flight.alone, inline_images=4)
    answers = asyncio.run(batcher.predict("a", images(7, 8)))
    assert answers[:, 0].tolist() == [7, 8]
    assert [(on_loop(thread), n) for thread, n in model.calls] == [(True, 2)]


def test_a_large_request_one_among_others_or_one_on_a_new_connection_goes_to_the_model_thread():
    model, in_flight = ThreadRecorder(), InFlight()
    batcher = MicroBatcher(model, alone=in_flight.alone, inline_images=4)

    async def scenario():
        in_flight.enter("a")
        in_flight.leave()
        in_flight.enter("a")
        large = await batcher.predict("a", images(*range(5)))  # over inline_images
        in_flight.enter("b")
        crowded = await batcher.predict("a", images(9))  # another request is in progress
        in_flight.leave()
        in_flight.leave()
        in_flight.enter("c")
        taking_turns = await batcher.predict("a", images(8))  # alone, but on another connection than the last
        return large, crowded, taking_turns

    large, crowded, taking_turns = asyncio.run(scenario())
    assert large[:, 0].tolist() == list(range(5)) and crowded[:, 0].tolist() == [9]
    assert taking_turns[:, 0].tolist() == [8]
    assert [(on_loop(thread), n) for thread, n in model.calls] == [(False, 5), (False, 1), (False, 1)]


def test_never_on_the_loop_without_alone_or_while_a_test_holds_the_batcher(tmp_path):
    model = ThreadRecorder()
    asyncio.run(MicroBatcher(model, inline_images=4).predict("a", images(1)))  # no alone(): never
    hold = tmp_path / "hold"
    batcher = MicroBatcher(model, hold_file=str(hold), alone=lambda: True, inline_images=4)

    async def scenario():
        free = await batcher.predict("a", images(2))  # the gate is configured but not closed
        hold.touch()
        held = asyncio.create_task(batcher.predict("a", images(3)))
        while len(batcher.queue) < 1:  # queued behind the hold, not run on the loop
            await asyncio.sleep(0)
        hold.unlink()
        return free, await held

    free, held = asyncio.run(asyncio.wait_for(scenario(), WAIT_S))
    assert free[:, 0].tolist() == [2] and held[:, 0].tolist() == [3]
    assert [on_loop(thread) for thread, _ in model.calls] == [False, True, False]


def test_a_burst_while_the_model_is_busy_still_merges():
    model, in_flight = ThreadRecorder(), InFlight()
    batcher = MicroBatcher(model, alone=in_flight.alone, inline_images=4)
    model.gate.clear()

    async def scenario():
        in_flight.enter("a")
        in_flight.leave()
        in_flight.enter("a")
        first = asyncio.create_task(batcher.predict("a", images(0, *range(10, 14))))  # 5 images: model thread
        entered = await asyncio.to_thread(model.entered.wait, WAIT_S)
        assert entered, "the first request never reached the model"
        in_flight.leave()
        in_flight.enter("a")  # even a caller that looks alone queues while a batch runs
        burst = [asyncio.create_task(batcher.predict("a", images(i))) for i in (1, 2, 3)]
        while len(batcher.queue) < 3:  # every burst request is queued behind the running batch
            await asyncio.sleep(0)
        model.gate.set()
        return await first, await asyncio.gather(*burst)

    first, burst = asyncio.run(asyncio.wait_for(scenario(), WAIT_S))
    assert first[:, 0].tolist() == [0, 10, 11, 12, 13]
    assert [b[:, 0].tolist() for b in burst] == [[1], [2], [3]]
    assert [(on_loop(thread), n) for thread, n in model.calls] == [(False, 5), (False, 3)]


def test_a_model_error_on_the_loop_reaches_the_caller():
    def broken(backend: str, pixels: np.ndarray, score: bool = False) -> np.ndarray:
        raise RuntimeError("model failed")

    batcher = MicroBatcher(broken, alone=lambda: True, inline_images=4)
    with pytest.raises(RuntimeError, match="model failed"):
        asyncio.run(batcher.predict("a", images(1)))
