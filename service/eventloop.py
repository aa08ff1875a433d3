"""Which event loop the worker's uvicorn runs: asyncio's by default, uvloop (uvicorn's own choice) on request.

Why not uvloop, uvicorn's "auto" choice: since libuv 1.45 (https://github.com/libuv/libuv/pull/3696) a
listening socket accepts one connection per turn of the loop. Under a flood a turn is long (it parses
every request that arrived meanwhile), so connections wait in the kernel's accept queue, where no
admission control can answer them: with uvloop the 1,024-connection flood kept answered requests
waiting for up to the whole run, far over the queue budget (FASHION_QUEUE_BUDGET_MS). asyncio's loop
accepts up to the backlog per turn, so every connection is in the server within a turn and admission
control (service.admission) answers it at once, with 429 and Retry-After when it is over the limit.
Side by side on the same machine (results/event-loop-amd-epyc-2c.md; the study was retired at 38b5e5f)
it bounded the flood's tail well under the budget at about the same throughput.

Set with ``FASHION_EVENT_LOOP``: ``asyncio`` (the default), ``uvloop``, or ``auto`` (uvicorn's choice:
uvloop when installed). BentoML builds uvicorn's ``Config`` with ``loop="auto"`` after it has imported
the service, so ``install`` points "auto" at the chosen loop before that.
"""

from __future__ import annotations

import os

DEFAULT = "asyncio"
LOOPS = {"asyncio": "uvicorn.loops.asyncio:asyncio_loop_factory", "uvloop": "uvicorn.loops.uvloop:uvloop_loop_factory"}


def install(choice: str | None = None) -> str:
    """Make uvicorn's ``loop="auto"`` mean ``choice`` (default: ``FASHION_EVENT_LOOP``, else DEFAULT).

    ``auto`` leaves uvicorn's own choice in place. Returns the choice. Raises ValueError for an unknown loop name.
    """
    choice = choice or os.environ.get("FASHION_EVENT_LOOP") or DEFAULT
    if choice != "auto" and choice not in LOOPS:
        raise ValueError(f"FASHION_EVENT_LOOP must be one of {['auto', *sorted(LOOPS)]}, not {choice!r}")
    if choice == "auto":
        return choice
    from uvicorn import config

    config.LOOP_FACTORIES["auto"] = LOOPS[choice]
    return choice
