"""Start a ``bentoml serve`` of the service, wait until it is ready, stop it: one launcher for tests,
benchmarks and reliability runs.

Standard library and httpx only, so importing it is cheap (it ships in the Bento). Each server gets a
BentoML home of its own: ``bentoml serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when it
starts, so a second server on a shared home silently breaks the first one's ``/metrics``. The models
are shared through a link, so nothing is copied.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE = "service.service:FashionClassifier"
# What a worker logs as it stops (service.service.report_requests): the API requests admission let in, how many
# got their whole answer, and how many were still in progress. One template for the writer and the reader.
STOPPED_LINE = "stopped: %d API requests let in, %d answered in full, %d still in progress"
STOPPED_PATTERN = re.compile(re.escape(STOPPED_LINE).replace("%d", r"(\d+)"))


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def store_models() -> Path:
    """The models folder of the current BentoML store (``$BENTOML_HOME``, else ``~/bentoml``)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / "models"


def private_home(workdir: Path, models: Path | None = None) -> Path:
    """A new BentoML home under ``workdir`` whose ``models`` links to ``models`` (default: the current store's)."""
    home = Path(tempfile.mkdtemp(prefix="bentoml-home-", dir=workdir))
    (home / "models").symlink_to(Path(models or store_models()).resolve())
    return home


@dataclass
class Server:
    """A ``bentoml serve`` process on a loopback port, its log, and its probe port if it has one."""

    proc: subprocess.Popen
    url: str
    log: Path
    health_url: str | None = None

    def wait_ready(self, timeout: float = 180.0, path: str = "/readyz", status: int = 200) -> float:
        """Seconds until ``path`` answers ``status``.

        Raises:
            RuntimeError: the server exited meanwhile (its log says why), or, waiting for ``/readyz``, its models
                failed to load (it would never be ready: ``/model_info``'s error, at once rather than at the timeout).
            TimeoutError: not within ``timeout`` seconds, naming what was awaited.
        """
        import httpx

        start = time.monotonic()
        next_check = start
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.url} exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == status:
                    return time.monotonic() - start
                if path == "/readyz" and time.monotonic() >= next_check:
                    next_check = time.monotonic() + 1.0
                    if error := self.load_error():
                        raise RuntimeError(f"server {self.url} will not become ready, its models failed to load: "
                                           f"{error}; see {self.log}")
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        raise TimeoutError(f"{self.url}{path} did not answer {status} within {timeout} s; see {self.log}")

    def load_error(self) -> str | None:
        """The error that stopped the models loading, as ``/model_info`` reports it (``None``: none so far)."""
        import httpx

        reply = httpx.post(self.url + "/model_info", timeout=2)
        return reply.json().get("error") if reply.status_code == 200 else None

    def stopped_counts(self) -> dict[str, int] | None:
        """The last worker's :data:`STOPPED_LINE` figures from the log (``None``: no worker has stopped cleanly)."""
        found = STOPPED_PATTERN.findall(self.log.read_text(errors="replace"))
        return dict(zip(("let_in", "answered", "in_progress"), map(int, found[-1]), strict=True)) if found else None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL to the whole process group after ``timeout`` seconds; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def start(workdir: Path, env: dict[str, str] | None = None, models: Path | None = None, health_port: bool = False,
          port: int | None = None, kind: type[Server] = Server, options: tuple[str, ...] = ()) -> Server:
    """Start the service on ``127.0.0.1`` with a private BentoML home under ``workdir``; does not wait.

    Args:
        workdir: folder for the home and the log (``server-<port>.log``).
        env: extra environment (``FASHION_*`` settings) over this process's.
        models: a BentoML models folder (default: the current store's).
        health_port: also serve the probes on a free port of their own (service.health), as deployed.
        port: the API port (default: a free one).
        kind: the :class:`Server` subclass to return.
        options: more ``bentoml serve`` options; with ``--ssl-certfile`` the URL is ``https://``.

    Returns:
        The server; call :meth:`Server.wait_ready` before use and :meth:`Server.stop` after.
    """
    port = port or free_port()
    extra = dict(env or {})
    health_url = None
    if health_port:
        probes = free_port()
        extra = {"FASHION_HEALTH_PORT": str(probes), "FASHION_HEALTH_HOST": "127.0.0.1", **extra}
        health_url = f"http://127.0.0.1:{probes}"
    log = Path(workdir) / f"server-{port}.log"
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "BENTOML_HOME": str(private_home(Path(workdir), models)),
               **extra}
    # ``python -m bentoml``, not the ``bentoml`` script: a venv copied to another machine keeps a working
    # interpreter while its scripts' shebangs point at the old path.
    with log.open("w") as sink:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1",
                                 "--port", str(port), *options],
                                cwd=REPO, env=environ, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    scheme = "https" if "--ssl-certfile" in options else "http"
    return kind(proc, f"{scheme}://127.0.0.1:{port}", log, health_url)
