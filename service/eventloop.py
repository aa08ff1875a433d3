"""Which event loop the worker's uvicorn runs: uvicorn's choice (uvloop) by default, asyncio's on request.

Why one may want asyncio's loop rather than uvloop, uvicorn's "auto" choice: since libuv 1.45 (https://github.com/libuv/libuv/pull/3696)
a listening socket accepts one connection per turn of the loop. Under a flood a turn takes ~100 ms
(it parses every request that arrived meanwhile), so the worker accepts ~10 connections a second:
in the 1,024-connection flood ~500-700 connections sat in the kernel's accept queue for up to the
whole run (p99 22 s, max 30 s; results/reliability.md), and a bare uvicorn app shows the same.
asyncio's loop accepts up to the backlog per turn, so every connection is in the server within a
turn and admission control (service.admission) can answer it. It costs throughput, though, and the
starvation depends on how the flood's connections race the first busy turns, so the default stays
uvicorn's until a quiet-machine comparison decides (docs/serving.md).

Set with ``FASHION_EVENT_LOOP`` (``auto``, the default: uvicorn's choice; ``asyncio``; ``uvloop``).
BentoML builds uvicorn's ``Config`` with ``loop="auto"`` after it has imported the service, so
``install`` points "auto" at the chosen loop before that.
"""

from __future__ import annotations

import os

LOOPS = {"asyncio": "uvicorn.loops.asyncio:asyncio_loop_factory", "uvloop": "uvicorn.loops.uvloop:uvloop_loop_factory"}


def install(choice: str | None = None) -> str:
    """Make uvicorn's ``loop="auto"`` mean ``choice`` (default: ``FASHION_EVENT_LOOP`` or auto: unchanged).

    Returns the choice. Raises ValueError for an unknown loop name.
    """
    choice = choice or os.environ.get("FASHION_EVENT_LOOP", "auto")
    if choice != "auto" and choice not in LOOPS:
        raise ValueError(f"FASHION_EVENT_LOOP must be one of {['auto', *sorted(LOOPS)]}, not {choice!r}")
    if choice == "auto":
        return choice
    from uvicorn import config

    config.LOOP_FACTORIES["auto"] = LOOPS[choice]
    return choice
