"""A batch job killed part-way (SIGKILL) and resumed from its journal writes what an uninterrupted run writes: a
real ``bentoml serve`` and the CLI as a process of its own. Everything else about the clients against the service
is tested in-process: tests/integration/test_clients_http.py; the retries against a mock: tests/unit."""

from __future__ import annotations

import asyncio
import csv
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from tests.helpers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _batch_process(server, source, out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "clients", "--url", server, "batch", str(source), "--out", str(out), "--quiet",
         "--batch-size", "64", "--concurrency", "2", *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


class Proxy:
    """Forwards to the real service, with a fault injected: once ``hold`` is true, every POST (a classify call)
    not yet forwarded is held unanswered until the proxy closes.

    It forwards no ``Accept`` header, as some proxies do: the batch CLI then gets JSON answers, and copes.
    """

    def __init__(self, target: str, hold: Callable[[], bool]) -> None:
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        self.closing = threading.Event()

        async def forward(request):
            while request.method == "POST" and hold() and not self.closing.is_set():
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(base_url=target, timeout=60) as client:
                upstream = await client.request(request.method, request.url.path, params=request.query_params,
                                                content=await request.body(),
                                                headers={"content-type": request.headers.get("content-type", "")})
            return Response(upstream.content, status_code=upstream.status_code,
                            media_type=upstream.headers.get("content-type"))

        self.app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])

    def __enter__(self) -> str:
        import uvicorn

        port = free_port()
        # log_config=None: uvicorn must not bind its loggers to pytest's captured (then closed) stderr.
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), "the proxy's uvicorn to start", 30,
                   interval=0.01)
        assert self.server.started, "the proxy's uvicorn thread ended without starting"
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self.server.should_exit = True
        self.thread.join(10)


def journal_lines(journal: Path) -> int:
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def test_sigkill_halfway_then_resume_equals_an_uninterrupted_run(server, dataset, tmp_path):
    source = tmp_path / "test.npz"
    np.savez(source, images=dataset.test_images[:6000], labels=dataset.test_labels[:6000])
    reference = tmp_path / "reference.csv"
    assert _batch_process(server, source, reference).wait(300) == 0
    out = tmp_path / "resumed.csv"
    journal = tmp_path / "resumed.csv.journal"
    # 6,000 images in chunks of 64 make 94 journal lines. The proxy forwards requests until the journal holds 30
    # answered chunks, then holds the rest: the job is killed part-way, every time, however fast or slow the machine
    # and however many requests the client had to resend (a count of requests would include those).
    with Proxy(server, hold=lambda: journal_lines(journal) >= 30) as url:
        proc = _batch_process(url, source, out)
        try:
            wait_until(lambda: journal_lines(journal) >= 30, "30 journal lines (30 answered chunks)", 300)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert not out.exists() and journal.exists()
    done = journal_lines(journal)
    assert 30 <= done < 94, done
    resumed = _batch_process(server, source, out, "--resume")
    stdout, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0
    assert out.read_bytes() == reference.read_bytes()
    ids = [r["id"] for r in read_rows(out)]
    assert len(ids) == len(set(ids)) == 6000
    assert b"taken from the journal" in stdout and not journal.exists()
