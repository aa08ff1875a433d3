"""Workers per machine and threads per runtime, measured: ``python -m benchmark.workers`` (``make workers``).

For each configuration (BentoML workers x ONNX Runtime intra-op threads per worker) a real
``bentoml serve`` starts (service.launch; one at a time, each on a BentoML home of its own), is warmed up,
and wrk drives it with single-image traffic (v2 binary and native JSON, 1, 16 and 64 connections) and with
batch traffic (``.npy`` requests of 1,024 images, compact ``.npy`` answers, 2 and 4 connections). The
order of the configurations and of the runs reverses from one repetition to the next; the report shows
medians, with the server's CPU use (all its processes) during each run.

Workers are set as a deployment would, over the service's own default (``workers=1`` in
``@bentoml.service``): ``BENTOML_CONFIG_OVERRIDES`` with ``{"services": {"fashion-classifier":
{"workers": N}}}``; threads with ``FASHION_THREADS``. Only the default backend is loaded
(``FASHION_BACKENDS=onnx-torch``) so that a start takes seconds; every request runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmark.batch import cpu_of
from benchmark.bench_http import REPO, run_wrk
from benchmark.peers import Route, one_image, our_routes
from benchmark.report import machine_name
from fashion.env import environment_stamp
from service import launch

SERVICE_NAME = "fashion-classifier"  # the name in service/service.py's @bentoml.service
BACKEND = "onnx-torch"
SINGLE_LEVELS = (1, 16, 64)
BATCH_LEVELS = (2, 4)
BATCH_IMAGES = 1024  # the service's largest request (ServiceConfig.max_images)
NPY = "application/x-npy"


@dataclass(frozen=True)
class Setup:
    """One configuration: BentoML worker processes, and intra-op threads of each worker's runtime."""

    workers: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.workers} worker(s) x {self.threads} thread(s)"

    def env(self) -> dict[str, str]:
        """The server's environment for this configuration (over service.launch's)."""
        return {"BENTOML_CONFIG_OVERRIDES": json.dumps({"services": {SERVICE_NAME: {"workers": self.workers}}}),
                "FASHION_THREADS": str(self.threads), "FASHION_BACKENDS": BACKEND}


DEFAULT_SETUPS = (Setup(1, 2), Setup(1, 1), Setup(2, 1), Setup(2, 2))


def parse_setup(text: str) -> Setup:
    """``Setup`` from ``"<workers>x<threads>"``, e.g. ``2x1``.

    Raises:
        argparse.ArgumentTypeError: not two positive whole numbers joined by ``x``.
    """
    workers, sep, threads = text.lower().partition("x")
    if not (sep and workers.isdigit() and threads.isdigit() and int(workers) > 0 and int(threads) > 0):
        raise argparse.ArgumentTypeError(f"expected <workers>x<threads> such as 2x1, got {text!r}")
    return Setup(int(workers), int(threads))


def batch_route(pixels: np.ndarray) -> Route:
    """1,024 copies of the sample image as one ``.npy`` request, answered as compact ``.npy`` rows."""
    from io import BytesIO

    buffer = BytesIO()
    np.save(buffer, np.repeat(pixels[None].astype(np.uint8), BATCH_IMAGES, axis=0))
    return Route("batch .npy x1024", "/classify_array", buffer.getvalue(), NPY, f"Accept: {NPY}")


def plan() -> list[tuple[Route, int]]:
    """Every (route, connections) run of one repetition."""
    png, pixels = one_image()
    single = {r.label: r for r in our_routes(png, pixels)}
    runs = [(single[label], c) for label in ("v2 binary", "native JSON") for c in SINGLE_LEVELS]
    return runs + [(batch_route(pixels), c) for c in BATCH_LEVELS]


def measure(server: launch.Server, route: Route, connections: int, seconds: float, body: Path) -> dict:
    """One wrk run with the server's CPU use over it (cores, all its processes)."""
    before = cpu_of(server.proc.pid)
    stats = run_wrk(server.url + route.path, connections, seconds, body, content_type=route.content_type,
                    header=route.header, timeout=30.0)
    stats["server_cpu_cores"] = (cpu_of(server.proc.pid) - before) / (stats["duration_us"] / 1e6)
    return stats


def run_setup(setup: Setup, runs: list[tuple[Route, int]], seconds: float, rep: int, workdir: Path) -> list[dict]:
    """Start one configuration, warm it up on every route, run every level, stop it; its rows."""
    server = launch.start(workdir, env=setup.env())
    rows = []
    try:
        server.wait_ready()
        bodies = {}
        for route, _ in runs:
            bodies[route.label] = workdir / f"{route.label}.body".replace(" ", "-")
            bodies[route.label].write_bytes(route.body)
        for route in {r.label: r for r, _ in runs}.values():  # warm-up: every worker sees every route
            run_wrk(server.url + route.path, 4, 1, bodies[route.label], content_type=route.content_type,
                    header=route.header, timeout=30.0)
        for route, connections in runs if rep % 2 == 0 else runs[::-1]:
            stats = measure(server, route, connections, seconds, bodies[route.label])
            images = BATCH_IMAGES if route.content_type == NPY else 1
            rows.append({"workers": setup.workers, "threads": setup.threads, "route": route.label,
                         "connections": connections, "rep": rep, "images_per_s": stats["rps"] * images, **stats})
            print(f"rep {rep} {setup.label:<24} {route.label:<17} c={connections:<3} {rows[-1]['images_per_s']:>9,.0f}"
                  f" images/s  p99 {stats['p99_us'] / 1000:7.1f} ms  server CPU {stats['server_cpu_cores']:.2f}"
                  f"  statuses {stats['statuses']}", flush=True)
    finally:
        server.stop()
    return rows


def medians(rows: list[dict]) -> list[dict]:
    """One row per (workers, threads, route, connections): medians over repetitions."""
    keys = dict.fromkeys((r["workers"], r["threads"], r["route"], r["connections"]) for r in rows)
    out = []
    for key in keys:
        runs = [r for r in rows if (r["workers"], r["threads"], r["route"], r["connections"]) == key]
        out.append({**dict(zip(("workers", "threads", "route", "connections"), key, strict=True)), "reps": len(runs),
                    **{k: statistics.median(r[k] for r in runs) for k in
                       ("images_per_s", "rps", "server_cpu_cores", "wrk_cpu_cores")},
                    "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
                    "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                    "spread": [min(r["images_per_s"] for r in runs), max(r["images_per_s"] for r in runs)],
                    "non_2xx": sum(n for r in runs for s, n in r["statuses"].items() if not s.startswith("2"))
                    + sum(r["socket_errors"] for r in runs)})
    return out


def render(report: dict) -> str:
    """The Markdown report: conditions, then one table per route, a line per configuration."""
    table = report["medians"]
    lines = [f"# Workers and threads, {report['machine']}", "",
             f"Written by `python -m benchmark.workers {shlex.join(report['argv'])}` at {report['when']}; "
             f"{report['seconds']} s per wrk run, {report['reps']} repetition(s) in alternating order, medians "
             f"(min-max over repetitions in brackets). One `bentoml serve` at a time, backend {BACKEND} only; "
             f"wrk runs on the same {report['cores']} cores. Images/s is requests/s for single images and "
             f"requests/s x {BATCH_IMAGES} for the batch route. Server CPU: cores used by all the server's "
             f"processes during the run. {report['note']}", ""]
    for route in dict.fromkeys(r["route"] for r in table):
        levels = sorted({r["connections"] for r in table if r["route"] == route})
        lines += [f"## {route}", "",
                  "| workers x threads | " + " | ".join(f"c={c} images/s, p50, p99, server CPU" for c in levels)
                  + " |", "| --- | " + " | ".join("---" for _ in levels) + " |"]
        for workers, threads in dict.fromkeys((r["workers"], r["threads"]) for r in table):
            cells = []
            for level in levels:
                [r] = [r for r in table if (r["workers"], r["threads"], r["route"], r["connections"])
                       == (workers, threads, route, level)]
                cells.append(f"{r['images_per_s']:,.0f} ({r['spread'][0]:,.0f}-{r['spread'][1]:,.0f}), "
                             f"{r['p50_ms']:.1f} ms, {r['p99_ms']:.1f} ms, {r['server_cpu_cores']:.2f}"
                             + (f" ({r['non_2xx']} errors)" if r["non_2xx"] else ""))
            lines.append(f"| {workers} x {threads} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", type=parse_setup, nargs="+", default=list(DEFAULT_SETUPS),
                        help="configurations as <workers>x<threads> (default: 1x2 1x1 2x1 2x2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run (default: 5)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, medians reported (default: 3)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the repetitions already in the JSON and run the rest (to split a long run)")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="run at most this many repetitions now (with --resume: finish later)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. what else the machine was doing")
    parser.add_argument("--out", type=Path, default=REPO / "results", help="folder for workers-<machine>.{md,json}")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    stamp = environment_stamp()
    stem = args.out / f"workers-{machine_name(stamp, None)}"
    rows = json.loads(stem.with_suffix(".json").read_text())["runs"] if args.resume else []
    done = len({r["rep"] for r in rows})
    runs = plan()
    with tempfile.TemporaryDirectory(prefix="workers-") as tmp:
        for rep in range(done, min(args.reps, done + (args.stop_after or args.reps))):
            for setup in args.setups if rep % 2 == 0 else args.setups[::-1]:
                rows += run_setup(setup, runs, args.seconds, rep, Path(tmp))
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_name(stamp, None),
              "environment": stamp, "cores": os.cpu_count(), "argv": list(argv if argv is not None else sys.argv[1:]),
              "seconds": args.seconds, "reps": len({r["rep"] for r in rows}), "note": args.note,
              "medians": medians(rows), "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(render(report))
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
