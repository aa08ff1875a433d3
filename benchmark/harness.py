"""The lab's one harness: a server to measure, the wrk runner, timing, and the results writer.

* :func:`start`, :func:`launch` and the context manager :func:`served` run ``bentoml serve`` of the service
  on loopback, wait until it is ready and stop it. Each server gets a BentoML home of its own: ``bentoml
  serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts, so a second server on a shared
  home silently breaks the first one's ``/metrics``. The models are shared through a link, not copied.
* :func:`run_wrk`: one closed-loop wrk run (``benchmark/wrk_upload.lua``).
* :func:`percentile` and :func:`time_calls`: the one percentile definition (nearest rank) every figure uses.
* :func:`write_results`: every results file goes through it, into :data:`RESULTS`.

Tests and ``tests/bento_check.py`` use it too; the product (``fashion training export service clients``)
never imports the lab.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.config import STOPPED_LINE

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
SERVICE = "service.service:FashionClassifier"
LUA = Path(__file__).with_name("wrk_upload.lua")
STOPPED_PATTERN = re.compile(re.escape(STOPPED_LINE).replace("%d", r"(\d+)"))


# --- a server to measure ---------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_ok(url: str) -> bool:
    """Whether ``url`` answers 200 now; a process still starting refuses the connection, which is a no."""
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def store_models() -> Path:
    """The models folder of the current BentoML store (``$BENTOML_HOME``, else ``~/bentoml``)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / "models"


def private_home(workdir: Path, models: Path | None = None) -> Path:
    """A new BentoML home under ``workdir`` whose ``models`` links to ``models`` (default: the current store's)."""
    home = Path(tempfile.mkdtemp(prefix="bentoml-home-", dir=workdir))
    (home / "models").symlink_to(Path(models or store_models()).resolve())
    return home


def model_dirs(root: Path | None = None) -> dict[str, Path]:
    """Exported model folders by name: the newest version under ``root``/<model>/, or the BentoML store's latest
    (``BENTOML_HOME`` respected: the ones a started server loads)."""
    from fashion.backends import MODEL_NAMES

    dirs: dict[str, Path] = {}
    for name in MODEL_NAMES.values():
        if root is not None:
            versions = [m.parent for m in Path(root, name).glob("*/manifest.json") if not m.parent.name.startswith(".")]
            if versions:
                dirs[name] = max(versions, key=lambda p: p.stat().st_mtime)
        else:
            import bentoml

            dirs[name] = Path(bentoml.models.get(f"{name}:latest").path)
    return dirs


def command_line(module: str, argv: list[str] | None) -> str:
    """The command a results file names: ``python -m module`` and its arguments."""
    return " ".join(["python -m", module, *(argv if argv is not None else sys.argv[1:])])


@dataclass
class Server:
    """A server process on a loopback port, its log, and its probe port if it has one."""

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
        """The last worker's ``STOPPED_LINE`` figures from the log (``None``: no worker has stopped cleanly)."""
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

    def worker(self):
        """The BentoML worker process (``psutil.Process``) serving requests; BentoML's arbiter is ``proc``."""
        import psutil

        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                command = " ".join(child.cmdline())
            except (psutil.ZombieProcess, psutil.NoSuchProcess):  # a killed worker the arbiter has not reaped yet
                continue
            if "_bentoml_impl.worker.service" in command:
                return child
        raise RuntimeError("no BentoML worker process found")

    def vitals(self) -> dict[str, float]:
        """The worker's resident memory (MiB), open file descriptors, TCP connections and CPU seconds so far."""
        worker = self.worker()
        cpu = worker.cpu_times()
        return {"rss_mib": worker.memory_info().rss / 2**20, "open_fds": worker.num_fds(),
                "connections": len(worker.net_connections(kind="tcp")), "cpu_s": cpu.user + cpu.system}


def start_process(command: list[str], url: str, log: Path, env: dict[str, str] | None = None,
                  health_url: str | None = None, cwd: Path = REPO) -> Server:
    """Run ``command`` (from the checkout by default) in a session of its own, output to ``log``; does not wait."""
    with log.open("w") as sink:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Server(proc, url, log, health_url)


def start(workdir: Path, env: dict[str, str] | None = None, models: Path | None = None, health_port: bool = False,
          port: int | None = None, options: tuple[str, ...] = ()) -> Server:
    """Start the service on ``127.0.0.1`` with a private BentoML home under ``workdir``; does not wait.

    Args:
        workdir: folder for the home and the log (``server-<port>.log``).
        env: extra environment (``FASHION_*`` settings) over this process's.
        models: a BentoML models folder (default: the current store's).
        health_port: also serve the probes on a free port of their own (service.health), as deployed.
        port: the API port (default: a free one).
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
    environ = {"TF_CPP_MIN_LOG_LEVEL": "3", "BENTOML_HOME": str(private_home(Path(workdir), models)), **extra}
    scheme = "https" if "--ssl-certfile" in options else "http"
    # ``python -m bentoml``, not the ``bentoml`` script: a venv copied to another machine keeps a working
    # interpreter while its scripts' shebangs point at the old path.
    return start_process([sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1",
                          "--port", str(port), *options], f"{scheme}://127.0.0.1:{port}",
                         Path(workdir) / f"server-{port}.log", environ, health_url)


def launch(workdir: Path, env: dict[str, str] | None = None, wait: bool = True, timeout: float = 180.0,
           **options: Any) -> Server:
    """:func:`start` with the probes on a port of their own (as a deployment has them), then wait until ready.

    A server that does not become ready is stopped before the error is raised. ``options`` go to :func:`start`.
    """
    server = start(workdir, env=env, **{"health_port": True, **options})
    if wait:
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
    return server


@contextmanager
def served(workdir: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180.0,
           **options: Any) -> Iterator[Server]:
    """The service, ready, for the ``with`` block; stopped after. ``workdir`` defaults to a new temporary folder."""
    server = launch(Path(workdir or tempfile.mkdtemp(prefix="fashion-lab-")), env, timeout=timeout, **options)
    try:
        yield server
    finally:
        server.stop()


# --- load -------------------------------------------------------------------------------------------------------

def multipart_body(image: bytes, boundary: str) -> bytes:
    """One ``images`` file part, as browsers and curl send it."""
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()


def run_wrk(url: str, connections: int, seconds: float, body_file: Path, boundary: str = "",
            content_type: str | None = None, timeout: float = 10.0, threads: int = 1, header: str = "",
            per_s: float = 0.0) -> dict:
    """One closed-loop wrk run (needs ``wrk``); its counts, latency percentiles and wrk's own CPU use (cores).

    ``header``: one more request header, ``"Name: value"``. ``per_s`` > 0 paces the load: each connection pauses
    before each request so that, while answers are quick, the run sends about ``per_s`` requests per second.
    """
    env = {**os.environ, "WRK_BODY_FILE": str(body_file), "WRK_BOUNDARY": boundary, "WRK_HEADER": header,
           "WRK_DELAY_MS": f"{connections * 1000 / per_s:g}" if per_s > 0 else ""}
    if content_type:
        env["WRK_CONTENT_TYPE"] = content_type
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", f"{timeout:g}s",
         "-s", str(LUA), url],
        capture_output=True, text=True, env=env, check=True,
    )
    match = re.search(r"^WRK_JSON (.*)$", result.stdout, re.M)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{result.stdout}\n{result.stderr}")
    stats = json.loads(match.group(1))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds_run = stats["duration_us"] / 1e6
    stats["rps"] = stats["requests"] / seconds_run
    stats["wrk_cpu_cores"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds_run
    return stats


# --- timing -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """How long to measure: at least ``min_calls`` calls and ``min_seconds`` seconds, after a warm-up."""

    warmup_seconds: float = 0.3
    min_calls: int = 30
    min_seconds: float = 1.0
    max_calls: int = 20000


QUICK = Budget(warmup_seconds=0.02, min_calls=5, min_seconds=0.05, max_calls=2000)
FULL = Budget()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list: the smallest value with ``q``% at or below."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def time_calls(fn: Callable[[], object], budget: Budget) -> dict[str, float]:
    """Seconds per call: median, p99, interquartile range, count."""
    end = time.perf_counter() + budget.warmup_seconds
    fn()
    while time.perf_counter() < end:
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < budget.max_calls and (
            len(samples) < budget.min_calls or time.perf_counter() - start < budget.min_seconds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_s": statistics.median(samples), "p99_s": percentile(samples, 99),
            "iqr_s": quartiles[2] - quartiles[0], "calls": len(samples)}


# --- results ----------------------------------------------------------------------------------------------------

def machine_name(env: dict[str, Any], gpu: str | None = None) -> str:
    """A short file-name-safe name of the machine, e.g. ``amd-epyc-2c`` or ``nvidia-h100-80gb-hbm3``."""
    base = gpu if gpu else f"{env['cpu']}-{env['cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")


def write_results(name: str, text: str | None = None, data: Any = None, folder: Path | None = None) -> Path:
    """Write ``<folder>/<name>.md`` (``text``) and/or ``.json`` (``data``); the text's path, else the JSON's.

    Args:
        name: the file stem, e.g. ``benchmark-amd-epyc-2c`` (a name with a suffix is written as is, as text).
        text: the readable report (Markdown, or plain text for a ``.txt`` name).
        data: the same figures, JSON-ready (non-JSON values are written with ``str``).
        folder: default :data:`RESULTS`.
    """
    folder = Path(folder or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / name
    if data is not None:
        stem.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    if text is None:
        return stem.with_suffix(".json")
    path = stem if stem.suffix else stem.with_suffix(".md")
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path
