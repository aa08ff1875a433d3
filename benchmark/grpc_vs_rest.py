"""gRPC beside REST on one worker, with one load generator for both: ``python -m benchmark.grpc_vs_rest``.

Starts fashion-serve once (``onnx-torch``, ``FASHION_GRPC_PORT`` set), then perf_analyzer (Triton's load generator,
from the ``tritonclient`` wheel, as in benchmark.peers) sends the same random single ``UINT8`` images to the same
model over the Open Inference Protocol's REST binary route (``-i http``) and over gRPC (``-i grpc``) at 1, 16 and 64
concurrent requests. The protocols alternate first and second from one level and repetition to the next; the
report gives medians over the repetitions of inferences/s and perf_analyzer's client-side p50 and p99, and gRPC's
ratio to REST. Writes ``results/grpc-vs-rest-<machine>.md`` and ``.json``; ``--note`` adds a line (say there
whether the machine was shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmark import harness
from benchmark.harness import machine_name
from benchmark.peers import CACHE, LEVELS, perf_analyzer_binary
from fashion.env import environment_stamp

MODEL = "onnx-torch"
PROTOCOLS = ("http", "grpc")
# The server's own times per request (microseconds), which perf_analyzer reads from the statistics extension
# (service.stats) before and after each window.
SERVER_COLUMNS = {"server_queue_us": "Server Queue", "server_input_us": "Server Compute Input",
                  "server_infer_us": "Server Compute Infer", "server_output_us": "Server Compute Output"}


def run_perf_analyzer(binary: Path, env: dict[str, str], target: str, protocol: str, level: int, seconds: float,
                      out: Path) -> dict:
    """One perf_analyzer run at ``level`` concurrent requests; its inferences/s, p50 and p99 (ms)."""
    import csv
    import os

    command = [str(binary), "-m", MODEL, "-u", target, "-i", protocol, "-b", "1",
               "--concurrency-range", f"{level}:{level}", "-p", str(round(seconds * 1000)),
               "--max-trials", "10", "-s", "200", "-f", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env},
                            timeout=seconds * 12 + 60, check=False)
    if result.returncode != 0 or not out.exists():
        last = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()][-3:]
        raise RuntimeError(f"perf_analyzer -i {protocol} c={level} exited with {result.returncode}: "
                           f"{' / '.join(last)}")
    [row] = list(csv.DictReader(out.open()))
    return {"infer_per_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1e3,
            "p99_ms": float(row["p99 latency"]) / 1e3,
            **{key: float(row[column]) for key, column in SERVER_COLUMNS.items()}}


def measure(seconds: float, reps: int, cache: Path, workdir: Path) -> list[dict]:
    """Every (repetition, level, protocol) against one server; one row each."""
    binary, env = perf_analyzer_binary(cache)
    grpc_port = harness.free_port()
    server = harness.start(workdir, env={"FASHION_BACKENDS": MODEL, "FASHION_GRPC_PORT": str(grpc_port),
                                        "FASHION_GRPC_HOST": "127.0.0.1"})
    targets = {"http": server.url.removeprefix("http://"), "grpc": f"127.0.0.1:{grpc_port}"}
    rows = []
    try:
        server.wait_ready()
        for protocol in PROTOCOLS:  # warm-up, and a check that both answer
            run_perf_analyzer(binary, env, targets[protocol], protocol, 16, 1, workdir / f"warm-{protocol}.csv")
        for rep in range(reps):
            for i, level in enumerate(LEVELS):
                order = PROTOCOLS if (rep + i) % 2 == 0 else PROTOCOLS[::-1]
                for protocol in order:
                    stats = run_perf_analyzer(binary, env, targets[protocol], protocol, level, seconds,
                                              workdir / f"{protocol}-{level}-{rep}.csv")
                    rows.append({"protocol": protocol, "connections": level, "rep": rep, **stats})
                    print(f"{protocol} c={level} rep {rep}: {stats['infer_per_s']:,.0f} infer/s, "
                          f"p99 {stats['p99_ms']:.1f} ms", flush=True)
    finally:
        server.stop()
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Medians per (level, protocol), with gRPC's throughput ratio to REST at each level."""
    table = []
    for level in LEVELS:
        line: dict = {"connections": level}
        for protocol in PROTOCOLS:
            mine = [r for r in rows if r["protocol"] == protocol and r["connections"] == level]
            for key in ("infer_per_s", "p50_ms", "p99_ms", *SERVER_COLUMNS):
                line[f"{protocol}_{key}"] = statistics.median(r[key] for r in mine)
        line["grpc_over_http"] = line["grpc_infer_per_s"] / line["http_infer_per_s"]
        table.append(line)
    return table


def report(table: list[dict], args: argparse.Namespace, stamp: dict) -> str:
    """The Markdown report."""
    lines = [f"# gRPC beside REST, one worker ({stamp['cpu']}, {stamp['cores']} cores)", "",
             f"`python -m benchmark.grpc_vs_rest --seconds {args.seconds:g} --reps {args.reps}`, "
             f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. perf_analyzer (tritonclient 2.51) sends one random UINT8 "
             f"image per request to `{MODEL}`, every output, over REST v2 binary (`-i http`) and gRPC (`-i grpc`) "
             f"of the same server; medians of {args.reps} repetitions.", ""]
    if args.note:
        lines += [f"Note: {args.note}", ""]
    lines += ["| concurrency | REST infer/s | REST p50 / p99 ms | gRPC infer/s | gRPC p50 / p99 ms | gRPC / REST |",
              "| --- | --- | --- | --- | --- | --- |"]
    for row in table:
        lines.append(f"| {row['connections']} | {row['http_infer_per_s']:,.0f} | {row['http_p50_ms']:.2f} / "
                     f"{row['http_p99_ms']:.2f} | {row['grpc_infer_per_s']:,.0f} | {row['grpc_p50_ms']:.2f} / "
                     f"{row['grpc_p99_ms']:.2f} | {row['grpc_over_http']:.2f} |")
    lines += ["", "The server's own times, as perf_analyzer reads them from the statistics extension before and after "
              "each window (mean per request, microseconds; medians over the repetitions): the wait for the model "
              "call, reading the request's tensors, the model call, and building the outputs.", "",
              "| concurrency | protocol | queue | compute input | compute infer | compute output |",
              "| --- | --- | --- | --- | --- | --- |"]
    for row in table:
        for protocol in PROTOCOLS:
            lines.append(f"| {row['connections']} | {'REST' if protocol == 'http' else 'gRPC'} | " + " | ".join(
                f"{row[f'{protocol}_{key}']:,.0f}" for key in SERVER_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="perf_analyzer's window in seconds (default 5)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"where perf_analyzer's venv lives (default {CACHE})")
    parser.add_argument("--out", type=Path, default=harness.RESULTS, help="results folder (default results/)")
    parser.add_argument("--note", default="", help="a line for the report (e.g. whether the machine was shared)")
    args = parser.parse_args(argv)
    stamp = environment_stamp()
    with tempfile.TemporaryDirectory(prefix="grpc-vs-rest-") as tmp:
        rows = measure(args.seconds, args.reps, args.cache, Path(tmp))
    table = summarize(rows)
    stem = args.out / f"grpc-vs-rest-{machine_name(stamp, None)}"
    stem.with_suffix(".json").write_text(json.dumps({"environment": stamp, "note": args.note, "rows": rows,
                                                     "medians": table}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report(table, args, stamp))
    print(report(table, args, stamp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
