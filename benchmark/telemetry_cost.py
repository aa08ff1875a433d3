"""What request telemetry and tracing cost: ``python -m benchmark.telemetry_cost``.

The peers harness (wrk at 1, 16 and 64 connections, repetitions in alternating order, medians) on three servers of
fashion-serve only: this checkout with its defaults (request ids, per-stage histograms, drift gauges; tracing off),
this checkout with tracing on (``FASHION_OTLP_ENDPOINT`` pointed at an OTLP sink in this process that answers every
export), and a baseline revision from before request telemetry existed, which git extracts into a temporary folder.
Written to ``results/telemetry-cost-<machine>.{md,json}`` (docs/observability.md quotes it).
"""

from __future__ import annotations

import argparse
import http.server
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from benchmark import peers
from benchmark.harness import REPO, command_line, machine_name, write_results
from benchmark.keys import COST_ROUTES, extract, serve_command, switch_cost_lines
from fashion.env import environment_stamp

# The last commit before request telemetry (service/telemetry.py) existed.
BEFORE_TELEMETRY = "20d119d"
NAMES = ("tracing off", "tracing on", "baseline")


class Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that reads every export and answers 200; counts the exports."""

    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Sink.exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def servers(base: Path, commit: str, endpoint: str) -> list[peers.Peer]:
    routes = tuple(r for r in peers.our_routes(*peers.one_image()) if r.label in COST_ROUTES)
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    return [
        peers.Peer(NAMES[0], "this checkout, defaults (request ids, stage histograms, drift gauges; no tracing)",
                   serve_command(REPO), "/readyz", routes, env=quiet),
        peers.Peer(NAMES[1], "this checkout, FASHION_OTLP_ENDPOINT set: every request's spans exported over OTLP/HTTP",
                   serve_command(REPO), "/readyz", routes, env={**quiet, "FASHION_OTLP_ENDPOINT": endpoint}),
        peers.Peer(NAMES[2], f"commit {commit[:12]}, before request telemetry", serve_command(base), "/readyz",
                   routes, env=quiet),
    ]


def run(args: argparse.Namespace) -> dict:
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory(prefix="telemetry-") as tmp:
            base, commit = extract(args.baseline, Path(tmp) / "baseline")
            args.no_perf_analyzer = True
            endpoint = f"http://127.0.0.1:{sink.server_port}/v1/traces"
            results = peers.run_all(servers(base, commit, endpoint), args, Path(tmp))
    finally:
        sink.shutdown()
    return {"baseline": {"revision": args.baseline, "commit": commit}, "otlp_exports": Sink.exports, **results}


def render(report: dict) -> str:
    lines = [f"# Request telemetry and tracing: what they cost, {report['machine']}", "",
             f"Written by `{report['command']}` at {report['when']}; {report['seconds']} s per wrk run, "
             f"{report['reps']} repetitions, medians, one image per request, one server at a time, the three in "
             f"alternating order; the OTLP sink received {report['otlp_exports']} exports. {report['note']}", "",
             *peers.render_table(report["medians"], report["cores"]), ""]
    lines += [f"- {p['name']}: {p['configuration']}" for p in report["peers"]]
    lines += switch_cost_lines(report, "tracing", NAMES)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.telemetry_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per wrk run (default: 10)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, medians reported (default: 3)")
    parser.add_argument("--baseline", default=BEFORE_TELEMETRY, help="the revision to compare with (default: the "
                        "last commit before request telemetry)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. that the machine was busy")
    args = parser.parse_args(argv)
    args.cache = peers.CACHE
    stamp = environment_stamp()
    machine = machine_name(stamp)
    results = run(args)
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine, "environment": stamp,
              "cores": stamp["cores"], "command": command_line("benchmark.telemetry_cost", argv),
              "seconds": args.seconds, "reps": args.reps, "note": args.note, **results}
    print(f"wrote {write_results(f'telemetry-cost-{machine}', render(report), report)}")
    return 1 if results.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
