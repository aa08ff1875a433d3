"""The ``/parity`` endpoint: every loaded backend on the same images, through the batcher, compared.

The comparison itself is fashion.metrics.parity_report, which the readiness warm-up (service.registry)
also runs on the bundled sample images at load; how each pair is judged is said there.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np
from starlette.responses import JSONResponse

from fashion.metrics import parity_report
from service.batcher import MicroBatcher, OverloadedError
from service.registry import ModelRegistry


@functools.cache
def bundled_samples() -> np.ndarray:
    """The ten bundled sample images (decoded once)."""
    from fashion.samples import sample_images

    return sample_images()[0]


async def check_loaded_backends(batcher: MicroBatcher, registry: ModelRegistry,
                                pixels: np.ndarray | None) -> dict[str, Any] | JSONResponse:
    """``pixels`` (``None``: the bundled samples) through every loaded backend via the batcher, compared.

    Returns:
        The /parity answer: fashion.metrics.parity_report's report and ``source`` (``samples`` or ``request``); or 503
        with ``Retry-After`` when the batcher's queue is full.
    """
    source = "samples" if pixels is None else "request"
    pixels = bundled_samples() if pixels is None else pixels
    names = list(registry.backends)
    try:
        outputs = await asyncio.gather(*(batcher.predict(name, pixels) for name in names))
    except OverloadedError as exc:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
    logits = {name: out.logits for name, out in zip(names, outputs, strict=True)}
    return {"source": source, **parity_report(logits, registry.identities(), registry.config.parity_tolerance)}
