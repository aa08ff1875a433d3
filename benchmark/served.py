"""The service a benchmark talks to: one already running at a URL, or one it starts and stops itself."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def served(url: str | None, env: dict[str, str] | None = None) -> Iterator[str]:
    """Yield ``url`` as is, or start the service (``service.launch``, settings ``env``), wait, and stop it after.

    Args:
        url: a running service; None starts one on a free loopback port.
        env: ``FASHION_*`` settings for a started service (ignored for ``url``).
    """
    if url:
        yield url
        return
    from service import launch

    server = launch.start(Path(tempfile.mkdtemp(prefix="fashion-bench-")), env=env)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()
