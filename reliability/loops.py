"""The worker's event loops side by side: ``python -m reliability.loops [LOOP ...]`` (``make event-loops``).

For each ``FASHION_EVENT_LOOP`` choice (service.eventloop) one fresh ``bentoml serve``: wrk on
``/classify`` (one image, closed loop) at 1, 16 and 64 connections, medians over repetitions,
then the overload scenario of ``python -m reliability overload`` (1,024 connections for 30 s,
the batch CLI alongside). Which loop the worker really ran is read from its ``/livez`` on the
probe port. Each run is added to ``results/event-loop-<machine>.json`` (so loops can be run one at a
time, and again in another order) and the whole of it rendered to ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmark.bench_http import run_wrk
from benchmark.report import machine_name
from fashion.env import environment_stamp
from reliability import scenarios
from reliability.harness import BOUNDARY, Server, host_steal_seconds, launch, upload_body

RESULTS = Path(__file__).resolve().parents[1] / "results"
LOOPS = ("auto", "asyncio", "uvloop")
LEVELS = (1, 16, 64)


def loop_in_use(server: Server) -> str:
    """The class of the worker's event loop, as its heartbeat reports it on the probe port."""
    return httpx.get(f"{server.health_url}/livez", timeout=10).json()["event_loop"]


def closed_loop(server: Server, workdir: Path, seconds: float, reps: int) -> list[dict[str, Any]]:
    """wrk on ``/classify`` at each of LEVELS, ``reps`` times (levels reversed on odd repetitions); medians."""
    body_file, _ = upload_body(workdir)
    run_wrk(f"{server.url}/classify", 16, 2, body_file, BOUNDARY)  # warm-up
    runs = []
    for rep in range(reps):
        for level in LEVELS if rep % 2 == 0 else LEVELS[::-1]:
            stats = run_wrk(f"{server.url}/classify", level, seconds, body_file, BOUNDARY)
            runs.append({"connections": level, "rps": stats["rps"], "p50_ms": stats["p50_us"] / 1e3,
                         "p99_ms": stats["p99_us"] / 1e3,
                         "non_200": stats["requests"] - stats["statuses"].get("200", 0)})
            print(f"  c={level} rep {rep}: {runs[-1]}", flush=True)
    by_level = {level: [r for r in runs if r["connections"] == level] for level in LEVELS}
    return [{"connections": level, "reps": reps, "non_200": sum(r["non_200"] for r in mine),
             **{key: statistics.median(r[key] for r in mine) for key in ("rps", "p50_ms", "p99_ms")}}
            for level, mine in by_level.items()]


def compare_one(loop: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One server with ``FASHION_EVENT_LOOP=loop``: its loop, closed-loop figures, then the flood's."""
    from fashion.data import find_data_dir

    load_before, steal_before = os.getloadavg(), host_steal_seconds()
    server = launch(workdir, env={"FASHION_EVENT_LOOP": loop})
    try:
        in_use = loop_in_use(server)
        print(f"{loop}: the worker runs {in_use}", flush=True)
        bench = closed_loop(server, workdir, args.bench_seconds, args.reps)
        images = next(find_data_dir(download=False).glob("t10k-images-idx3-ubyte*"))
        flood = scenarios.overload(server, workdir, seconds=args.seconds, connections=args.connections,
                                   batch_input=images, batch_items=10_000)
    finally:
        server.stop()
    return {"event_loop": in_use, "closed_loop": bench, "overload": flood,
            "load_average_before": load_before, "host_steal_s": host_steal_seconds() - steal_before}


def render(report: dict[str, Any]) -> str:
    """Markdown: one row per run (loop and time) for the closed loop, then one for its flood."""
    lines = [f"# Event loops side by side, {report['machine']}", "",
             "Written by `python -m reliability.loops` (`make event-loops`): per `FASHION_EVENT_LOOP` value, one fresh "
             "`bentoml serve`, wrk on `/classify` (one PNG per request, closed loop) at 1, 16 and 64 connections "
             "(medians over the repetitions), then the flood of `python -m reliability overload` on the same "
             "server. Server and load generators share the machine's 2 cores; each run held the repo's CPU lock, "
             "so no other benchmark ran meanwhile (the load average is that of the minute before, often another "
             "worker's locked run just ending; steal: CPU seconds the hypervisor gave to other guests).", "",
             "| FASHION_EVENT_LOOP | worker's loop | when | " + " | ".join(f"c={c} req/s, p50, p99" for c in LEVELS)
             + " | c=1 p99 / p50 | load avg before | steal s |",
             "| --- | --- | --- | " + " | ".join("---" for _ in LEVELS) + " | --- | --- | --- |"]
    for run in report["runs"]:
        cells = [f"{r['rps']:,.0f}, {r['p50_ms']:.2f} ms, {r['p99_ms']:.2f} ms" for r in run["closed_loop"]]
        single = run["closed_loop"][0]
        lines.append(f"| {run['loop']} | `{run['event_loop']}` | {run['when']} | " + " | ".join(cells)
                     + f" | {single['p99_ms'] / single['p50_ms']:.1f} | {run['load_average_before'][0]:.2f} | "
                     f"{run['host_steal_s']:.1f} |")
    lines += ["", "The flood (answered requests' latency, as wrk measures it from the request's write):", "",
              "| FASHION_EVENT_LOOP | when | connections, s | responses | by status | unanswered (socket errors) | "
              "p50 ms | p99 ms | max ms | 200/s | capacity at 32 clients /s | back to normal s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in report["runs"]:
        f = run["overload"]
        lines.append(f"| {run['loop']} | {run['when']} | {f['connections']}, {f['seconds']} | {f['responses']:,} | "
                     f"{f['statuses']} | {sum(f['socket_errors'].values())} | {f['p50_ms']:.0f} | {f['p99_ms']:.0f} | "
                     f"{f['max_ms']:.0f} | {f['answered_200_rps']:,} | {f['sustainable_rps']:,} | "
                     f"{f['recovery_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.loops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("loops", nargs="*", metavar="LOOP", help=f"any of {', '.join(LOOPS)} (default: auto asyncio)")
    parser.add_argument("--bench-seconds", type=float, default=5.0, help="seconds per wrk run (default: 5)")
    parser.add_argument("--reps", type=int, default=3, help="closed-loop repetitions (default: 3)")
    parser.add_argument("--seconds", type=float, default=30.0, help="flood length (default: 30)")
    parser.add_argument("--connections", type=int, default=1024, help="flood connections (default: 1024)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results file (default: results/event-loop-<machine>.json)")
    args = parser.parse_args(argv)
    loops = args.loops or ["auto", "asyncio"]
    if unknown := sorted(set(loops) - set(LOOPS)):
        parser.error(f"unknown loop(s) {unknown}")
    stamp = environment_stamp()
    machine = machine_name(stamp, None)
    out = args.out or RESULTS / f"event-loop-{machine}.json"
    report = json.loads(out.read_text()) if out.exists() else {"runs": []}
    report.update(machine=machine, environment=stamp)
    with tempfile.TemporaryDirectory(prefix="loops-") as tmp:
        for loop in loops:
            entry = compare_one(loop, args, Path(tmp))
            report["runs"].append({"loop": loop, "when": datetime.now(UTC).isoformat(timespec="seconds"), **entry})
            out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(render(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
