"""Replicas behind a real load balancer: haproxy in front of ``bentoml serve`` replicas (docs/scale-out.md).

``python -m benchmark.scale_out`` (``make scale-out``) starts two replicas of the service (service.launch)
and Debian's haproxy in front of them, then runs the batch CLI's job over the 10,000 test images
through the balancer with one replica in service and with two, alternating, and writes the images/s
of each and their ratio to ``results/scale-out-<machine>.md`` and ``.json``.
tests/e2e/test_scale_out.py uses the same pieces to drain and restart a replica under load.

The balancer mirrors deploy/kubernetes/fashion-serve.yaml: health checks on each replica's probe port
(``/readyz``, service.health), and client-address affinity (``balance source``, the Service's
``sessionAffinity: ClientIP``) for dataset tasks, whose state lives in the replica that took the
submit. Stateless requests are spread round-robin.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.launch import Server, free_port, start

RESULTS = Path(__file__).resolve().parents[1] / "results"
# Statuses a client may see through the balancer: answers, and the two its retry policy resends.
RETRIED = (429, 503)


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
    closes an idle connection the balancer has just chosen (a 502 the client would not retry).
    """
    from service.task_routes import TASK_ROUTE

    def servers(track: str | None) -> list[str]:
        return [f"    server {r.name} 127.0.0.1:{r.port} "
                + (f"track {track}/{r.name}" if track else f"check port {r.health_port}") for r in replicas]

    return "\n".join([
        "global",
        "    log stdout format raw local0",
        f"    stats socket {folder / 'haproxy.sock'} level admin",
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


def tiled_test_set(data_dir: str | None, count: int, folder: Path) -> Path:
    """The test images repeated up to ``count`` images, as a ``.npy`` the batch CLI reads: a run long enough
    (seconds) to time, where the 10,000 alone take a fraction of a second."""
    import numpy as np

    from fashion.data import load_fashion_mnist

    images = load_fashion_mnist(data_dir).test_images
    path = folder / f"test-images-x{count}.npy"
    np.save(path, np.resize(images, (count, *images.shape[1:])))
    return path


def measure(balancer: Balancer, replicas: Sequence[Replica], images: Path, work: Path, batch_size: int,
            repeats: int) -> dict[str, list]:
    """Images/s through the balancer with 1 and with 2 replicas in service, alternated ``repeats`` times,
    and each replica's share of the requests in the two-replica runs."""
    runs: dict[str, list] = {"1": [], "2": [], "shares": []}
    run_batch(balancer.url, images, work / "warm-up.csv", batch_size)  # both replicas' first requests
    for rep in range(repeats):
        for in_service in (1, 2):
            balancer.set_enabled(replicas[1].name, in_service == 2)
            offset = balancer.log.stat().st_size
            summary = run_batch(balancer.url, images, work / f"run-{rep}-{in_service}.csv", batch_size)
            if summary.exit_code != 0 or summary.ok != summary.total:
                raise RuntimeError(f"the batch job through the balancer failed: {summary.line()}")
            runs[str(in_service)].append(summary.images_per_second)
            if in_service == 2:
                served = [server for backend, server, *_ in balancer.requests(offset) if backend == "replicas"]
                runs["shares"].append({r.name: served.count(r.name) / len(served) for r in replicas})
            print(f"  repeat {rep + 1}, {in_service} replica(s): {summary.images_per_second:,.0f} images/s",
                  flush=True)
    return runs


def write_results(results: dict, out: Path) -> Path:
    """``scale-out-<machine>.json`` and ``.md`` in ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"scale-out-{results['machine']}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    env, s = results["environment"], results["summary"]
    lines = [
        f"# Replicas behind haproxy: {results['machine']}", "",
        f"{results['date']}, `{results['command']}`. CPU {env['cpu']}, {env['cores']} cores; "
        f"haproxy: {results['haproxy']}. The batch CLI's job over {results['images']:,} images (the 10,000 test "
        f"images repeated; batch size {results['batch_size']}, 4 requests in flight) through haproxy, with one "
        f"replica in service (the other in maintenance) and with two, alternated {results['repeats']} times; medians.",
        "",
        "| replicas in service | images/s (median) | runs |", "| --- | --- | --- |",
        *[f"| {n} | {s[str(n)]['median']:,.0f} | {', '.join(f'{r:,.0f}' for r in s[str(n)]['runs'])} |"
          for n in (1, 2)],
        "", f"Two replicas / one: **{s['ratio']:.2f}x**. Requests each replica served in the two-replica runs: "
        + "; ".join(", ".join(f"{name} {share:.0%}" for name, share in run.items()) for run in s["shares"]) + ".",
        "",
        "What this measures: that the balancer spreads the job over both replicas and loses nothing, not "
        f"how serving scales. Both replicas, haproxy and the client share the same {env['cores']} cores, and "
        "one replica already uses all of them (ONNX Runtime's threads), so a second one on the same cores "
        "cannot add compute: the ratio can be at most about 1, and is lower where the two replicas' threads "
        "and the balancer compete for the same cores. Scaling needs replicas on "
        "machines (or pods with CPU limits) of their own (docs/scale-out.md).",
        "", f"Measured on a machine shared with other jobs: {results['note']}", "",
    ]
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    from benchmark.report import machine_name
    from fashion.env import environment_stamp

    parser = argparse.ArgumentParser(prog="python -m benchmark.scale_out", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256, help="images per request (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per replica count (default 5)")
    parser.add_argument("--images", type=int, default=100_000,
                        help="images per run: the test set repeated (default 100,000)")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: found)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default results/)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="scale-out-"))
    images = tiled_test_set(args.data_dir, args.images, work)
    replicas = [Replica.on_free_ports(f"r{i}") for i in range(2)]
    servers = [start_replica(work, r) for r in replicas]
    balancer = None
    try:
        for server in servers:
            server.wait_ready(300)
        balancer = Balancer.start(work / "haproxy", replicas)
        balancer.wait_for(lambda st: all(st.get(r.name) == "UP" for r in replicas), "both replicas UP", 60)
        runs = measure(balancer, replicas, images, work, args.batch_size, args.repeats)
    finally:
        if balancer is not None:
            balancer.stop()
        for server in servers:
            server.stop()
    env = environment_stamp()
    summary: dict = {n: {"median": statistics.median(runs[n]), "runs": runs[n]} for n in ("1", "2")}
    summary["shares"] = runs["shares"]
    summary["ratio"] = summary["2"]["median"] / summary["1"]["median"]
    version = subprocess.run([haproxy_binary(), "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    results = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_name(env, None),
               "command": " ".join(["python -m benchmark.scale_out", *(sys.argv[1:] if argv is None else argv)]),
               "environment": env, "haproxy": version.removeprefix("HAProxy version ").split(" ")[0],
               "images": args.images, "batch_size": args.batch_size, "repeats": args.repeats, "summary": summary,
               "note": "other processes ran meanwhile, so compare the two rows of one run, not across runs."}
    print(write_results(results, args.out).read_text())
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
