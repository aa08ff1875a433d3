"""Replicas behind a real load balancer: haproxy in front of ``bentoml serve`` replicas (docs/scale-out.md).

tests/e2e/test_scale_out.py uses these pieces to drain and restart a replica under load. The one-off
measurement of one replica against two (results/scale-out-amd-epyc-2c.md) was retired at 38b5e5f.

The balancer mirrors deploy/kubernetes/fashion-serve.yaml: health checks on each replica's probe port
(``/readyz``, service.health), and client-address affinity (``balance source``, the Service's
``sessionAffinity: ClientIP``) for dataset tasks, whose state lives in the replica that took the
submit. Stateless requests are spread round-robin.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmark.harness import Server, free_port, start

# Statuses a client may see through the balancer besides answers: those its retry policy resends.
RETRIED = (429, 502, 503)
# haproxy resends only a request it holds whole: room for a single image and for 100 as .npy, with their headers.
RETRY_BUFFER_BYTES = 128 * 1024


@dataclass(frozen=True)
class Replica:
    """One replica's name in the balancer and its two loopback ports (API, probes)."""

    name: str
    port: int
    health_port: int

    @classmethod
    def on_free_ports(cls, name: str) -> Replica:
        return cls(name, free_port(), free_port())


def start_replica(workdir: Path, replica: Replica, env: dict[str, str] | None = None,
                  models: Path | None = None) -> Server:
    """``bentoml serve`` for ``replica`` on its fixed ports (a restart reuses them); does not wait."""
    probes = {"FASHION_HEALTH_PORT": str(replica.health_port), "FASHION_HEALTH_HOST": "127.0.0.1"}
    server = start(Path(workdir), env={**probes, **(env or {})}, models=models, port=replica.port)
    server.health_url = f"http://127.0.0.1:{replica.health_port}"
    return server


def haproxy_config(port: int, replicas: Sequence[Replica], folder: Path) -> str:
    """An haproxy configuration: ``port`` on loopback in front of ``replicas``, its admin socket in ``folder``.

    Each replica is checked on its probe port every 0.5 s (down after 2 failures, up after 2 passes).
    A request refused by a replica that is stopping is sent to another (``retries``, ``redispatch``);
    ``http-server-close`` opens a new connection to a replica per request, so a stopping replica never
    closes an idle connection the balancer has just chosen (a 502 the client would not retry). A connection
    the replica's kernel had accepted but the stopping server never read is closed unanswered: classification
    is idempotent, so the ``replicas`` backend resends such a request to another replica too (``retry-on
    empty-response``), which needs the whole request held in haproxy's buffer (``option http-buffer-request``,
    ``tune.bufsize``); a larger one still gets the 502, which the batch client retries. Dataset tasks are not
    resent: a submit sent twice would start two tasks.
    """
    from service.task_routes import TASK_ROUTE

    def servers(track: str | None) -> list[str]:
        return [f"    server {r.name} 127.0.0.1:{r.port} "
                + (f"track {track}/{r.name}" if track else f"check port {r.health_port}") for r in replicas]

    return "\n".join([
        "global",
        "    log stdout format raw local0",
        f"    stats socket {folder / 'haproxy.sock'} level admin",
        f"    tune.bufsize {RETRY_BUFFER_BYTES}",
        "defaults",
        "    mode http",
        "    log global",
        # One line per request: backend, server, status, method, URI (parsed by Balancer.requests).
        '    log-format "%b %s %ST %HM %HU"',
        "    option http-server-close",
        "    retries 3",
        "    option redispatch 1",
        "    timeout connect 2s",
        "    timeout client 300s",
        "    timeout server 300s",
        "    default-server inter 500ms fall 2 rise 2",
        "frontend fashion",
        f"    bind 127.0.0.1:{port}",
        f"    use_backend tasks if {{ path_beg {TASK_ROUTE}/ }}",
        "    default_backend replicas",
        "backend replicas",
        "    balance roundrobin",
        "    option http-buffer-request",
        "    retry-on conn-failure empty-response",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        *servers(None),
        "backend tasks",
        "    balance source",
        "    hash-type consistent",  # a replica going away moves only its own clients
        *servers("replicas"),
        "",
    ])


@dataclass
class Balancer:
    """A running haproxy: its URL, admin socket and request log."""

    proc: subprocess.Popen
    url: str
    sock: Path
    log: Path

    @classmethod
    def start(cls, folder: Path, replicas: Sequence[Replica]) -> Balancer:
        """haproxy in the foreground (``-db``) with :func:`haproxy_config`; returns once its admin socket answers."""
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = folder / "haproxy.cfg"
        config.write_text(haproxy_config(port, replicas, folder))
        log = folder / "haproxy.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=sink,
                                    stderr=subprocess.STDOUT)
        balancer = cls(proc, f"http://127.0.0.1:{port}", folder / "haproxy.sock", log)
        balancer.wait_for(lambda states: bool(states), "haproxy's admin socket", 30)
        return balancer

    def command(self, line: str) -> str:
        """One command on the admin socket (https://docs.haproxy.org/2.6/management.html#9.3)."""
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(self.sock))
            conn.sendall(line.encode() + b"\n")
            return b"".join(iter(lambda: conn.recv(65536), b"")).decode()

    def states(self) -> dict[str, str]:
        """Each replica's state as haproxy sees it (``UP``, ``DOWN``, ``MAINT``, ``UP 1/2``...); {} before it runs."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.proc.returncode}; see {self.log}")
        try:
            table = self.command("show stat").lstrip("# ")
        except OSError:
            return {}
        return {row["svname"]: row["status"] for row in csv.DictReader(io.StringIO(table))
                if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_for(self, check: Callable[[dict[str, str]], bool], what: str, timeout: float) -> None:
        """Poll :meth:`states` until ``check`` holds; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not check(self.states()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}; haproxy says {self.states()}")
            time.sleep(0.1)

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Take a replica out of service (maintenance) or put it back; waits until haproxy agrees."""
        self.command(f"{'enable' if enabled else 'disable'} server replicas/{name}")
        want = (lambda s: s == "UP") if enabled else (lambda s: s.startswith("MAINT"))
        self.wait_for(lambda states: want(states[name]), f"{name} {'UP' if enabled else 'in maintenance'}", 120)

    def requests(self, offset: int = 0) -> list[tuple[str, str, int, str, str]]:
        """(backend, server, status, method, URI) per request logged from byte ``offset`` of the log on."""
        with self.log.open("rb") as fh:
            fh.seek(offset)
            rows = [line.decode().split(" ") for line in fh if line.count(b" ") == 4]
        return [(b, s, int(status), method, uri) for b, s, status, method, uri in rows if status.isdigit()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def haproxy_binary() -> str:
    """Debian's haproxy (``apt-get install haproxy``; .ci/run installs it)."""
    found = shutil.which("haproxy") or (Path("/usr/sbin/haproxy").exists() and "/usr/sbin/haproxy")
    if not found:
        raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
    return found


def run_batch(url: str, images: Path, out: Path, batch_size: int, backend: str | None = None,
              wrap: Callable[[Callable], Callable] | None = None):
    """The batch CLI's job (``python -m clients batch``) against ``url``, in this process; its Summary.

    ``wrap``: applied to the CLI's classify function (a test uses it to pause the job at a chosen chunk).
    """
    from clients.__main__ import parse_args, remote_classifier
    from clients.batch import JobConfig, run_job
    from clients.sources import open_source

    argv = ["--url", url, *(["--backend", backend] if backend else []), "batch", str(images), "--out", str(out),
            "--batch-size", str(batch_size), "--quiet"]
    args = parse_args(argv)
    classify, retried = remote_classifier(args)
    config = JobConfig(batch_size=args.batch_size, concurrency=args.concurrency or 4, progress=False)
    return run_job(open_source(args.input[0], args.labels), out, wrap(classify) if wrap else classify, config, retried)
