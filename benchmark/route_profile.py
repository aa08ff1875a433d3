"""Where a request's time goes in the worker: ``python -m benchmark.route_profile`` (``make route-profile``).

Serves this checkout and a baseline revision (default: the last commit before the inference lane,
service.seams.InferenceLane), one at a time, drives one of benchmark.peers' routes (``--route``, default "v2 binary":
``POST /v2/models/onnx-torch/infer`` with one image as binary data and the default outputs) with wrk at
16 connections, samples the BentoML worker with py-spy meanwhile, and sorts the samples of the worker's event loop
by the code they were in (:data:`GROUPS`). Time per request in a group is its samples over the sampling rate, over
the requests answered while sampling. The sampler takes CPU from the cores the server and wrk share, so the
requests/s while sampling are not the servers' speed: the same route is then driven without it, both servers in
alternating order over ``--reps`` repetitions at 1, 16 and 64 connections (benchmark.peers.run_all). Writes
``results/<stem>-<machine>.{md,json}`` (default stem ``route-profile``); docs/serving.md quotes them.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmark import peers
from benchmark.harness import (
    REPO,
    Server,
    command_line,
    free_port,
    machine_name,
    private_home,
    run_wrk,
    start_process,
    write_results,
)
from benchmark.keys import extract, serve_command
from fashion.env import environment_stamp

# The last commit before the inference lane (service.seams.InferenceLane).
BEFORE_LANE = "839cbfb5211d3e122332348f8d2a45c1c4b5bade"
CONNECTIONS = 16
RATE_HZ = 100
# (group, the leaf frame's file path starts with one of these, after site-packages), first match wins.
GROUPS = (
    ("HTTP server and event loop (uvicorn, asyncio, the socket)", ("uvicorn/", "asyncio/", "selectors.py",
                                                                  "httptools/", "socket.py")),
    ("Starlette (apps, routers, request and response objects)", ("starlette/",)),
    ("BentoML's layers (context, tracing, metrics, input and output models)", (
        "bentoml/", "_bentoml_impl/", "_bentoml_sdk/", "opentelemetry/", "pydantic/", "pydantic_core/")),
    ("Prometheus series", ("prometheus_client/",)),
    ("our layers (telemetry, keys, admission, deadline, lane, tasks)", (
        "service/telemetry.py", "service/admission.py", "service/seams.py", "service/task_routes.py",
        "service/serving.py", "service/service.py", "service/auth.py")),
    ("the endpoint (read, parse, answer, statistics)", ("service/v2.py", "service/inputs.py", "service/stats.py",
                                                        "service/lifecycle.py", "service/shadow.py",
                                                        "service/registry.py", "service/answers.py")),
    ("decoding images (Pillow, fashion.imaging)", ("PIL/", "fashion/imaging.py")),
    ("JSON encoding and decoding", ("json/",)),
    ("numpy and the contract (softmax, checks)", ("numpy/", "fashion/")),
    ("the batcher and the hop to the model thread", ("service/batcher.py", "concurrent/", "threading.py")),
)
OTHER = "other"
IDLE = ("selectors.py",)  # the loop waiting in epoll: not work, left out of the per-request times


def leaf_path(frame: str) -> str:
    """A py-spy frame's file, relative to site-packages or the checkout (``"?"`` when it names none)."""
    found = re.search(r"\((.*?):\d+\)$", frame)
    path = found.group(1) if found else "?"
    path = re.sub(r".*/site-packages/", "", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    return re.sub(r".*/(service|fashion|benchmark)/", r"\1/", path)


def group_of(path: str) -> str:
    """The :data:`GROUPS` name of a file, or :data:`OTHER`."""
    return next((name for name, prefixes in GROUPS if path.startswith(prefixes)), OTHER)


def event_loop_samples(raw: str) -> tuple[collections.Counter, int]:
    """Samples of the event loop per group, and its idle samples (waiting in epoll), from py-spy's raw output.

    py-spy's raw format is one stack per line, root first, then its count. The model thread's stacks start in
    ``threading``; every other stack is the main thread's, whose coroutines py-spy shows from their own frame.
    """
    groups: collections.Counter = collections.Counter()
    idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or stack.startswith("Thread._bootstrap"):
            continue
        path = leaf_path(stack.split(";")[-1])
        if path.startswith(IDLE):
            idle += int(count)
        else:
            groups[group_of(path)] += int(count)
    return groups, idle


def profile_server(server: Server, route: peers.Route, seconds: float, workdir: Path) -> dict[str, Any]:
    """wrk at :data:`CONNECTIONS` on ``route`` while py-spy samples the worker; requests/s and samples per group."""
    body = workdir / "body"
    body.write_bytes(route.body)
    url = server.url + route.path
    run_wrk(url, CONNECTIONS, 3, body, content_type=route.content_type, header=route.header)  # warm up
    raw = workdir / "profile.txt"
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(server.worker().pid),
                            "--duration", str(round(seconds)), "--rate", str(RATE_HZ), "--format", "raw",
                            "--nonblocking", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # py-spy attaches before the load starts
    stats = run_wrk(url, CONNECTIONS, seconds, body, content_type=route.content_type, header=route.header)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy failed: {err[-2000:]}")
    groups, idle = event_loop_samples(raw.read_text())
    return {"rps": stats["rps"], "p99_ms": stats["p99_us"] / 1000, "requests": stats["requests"],
            "samples": dict(groups), "idle_samples": idle}


def per_request_us(row: dict[str, Any]) -> dict[str, float]:
    """Event-loop microseconds per answered request in each group: samples / rate / requests."""
    return {name: count / RATE_HZ / row["requests"] * 1e6 for name, count in row["samples"].items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    route = next(r for r in peers.our_routes(*peers.one_image()) if r.label == args.route)
    rows = []
    with tempfile.TemporaryDirectory(prefix="route-profile-") as tmp:
        base, commit = extract(args.baseline, Path(tmp) / "baseline")
        for name, code in (("before", base), ("after", REPO)):
            port = free_port()
            command = serve_command(code)(Path(sys.executable).parent, port, Path(tmp))
            server = start_process(command, f"http://127.0.0.1:{port}", Path(tmp) / f"{name}.log",
                                   {"TF_CPP_MIN_LOG_LEVEL": "3", "BENTOML_HOME": str(private_home(Path(tmp)))})
            try:
                server.wait_ready(240)
                row = profile_server(server, route, args.seconds, Path(tmp))
            finally:
                server.stop()
            rows.append({"name": name, "code": "this checkout" if code == REPO else f"commit {commit[:12]}", **row})
        plan = argparse.Namespace(seconds=args.load_seconds, reps=args.reps, cache=peers.CACHE, no_perf_analyzer=True)
        load = peers.run_all([peers.Peer(row["name"], row["code"], serve_command(code), "/readyz", (route,),
                                         env={"TF_CPP_MIN_LOG_LEVEL": "3"})
                              for row, code in zip(rows, (base, REPO), strict=True)], plan, Path(tmp))
    return {"command": command_line("benchmark.route_profile", args.argv), "env": environment_stamp(),
            "route": route.label, "connections": CONNECTIONS, "rate_hz": RATE_HZ, "seconds": args.seconds,
            "baseline": commit, "rows": rows, "load_seconds": args.load_seconds, "reps": args.reps,
            "load": load["medians"], "failures": load["failures"]}


def render(report: dict[str, Any]) -> str:
    rows = report["rows"]
    us = {row["name"]: per_request_us(row) for row in rows}
    names = [name for name, _ in GROUPS if any(name in u for u in us.values())] + \
        ([OTHER] if any(OTHER in u for u in us.values()) else [])
    intro = (f"Written by `{report['command']}` on {report['env'].get('cpu', '?')}: the route {report['route']} "
             f"(one image) with wrk at {report['connections']} connections for {report['seconds']:g} s while py-spy "
             f"sampled the worker at {report['rate_hz']} Hz. Microseconds of the event loop per answered request, by "
             "the code its samples were in (benchmark/route_profile.py: GROUPS); the loop's idle wait in epoll is "
             f"left out. Before: commit {report['baseline'][:12]}; after: this checkout.")
    lines = [f"# Where a request's time goes, {report['route']}, {machine_name(report['env'])}", "", intro, "",
             "| event loop, µs per request | " + " | ".join(f"{r['name']} ({r['code']})" for r in rows) + " |",
             "| --- | " + " | ".join("---:" for _ in rows) + " |"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{us[r['name']].get(name, 0.0):,.0f}" for r in rows) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(us[r['name']].values()):,.0f}**" for r in rows) + " |")
    lines.append("| requests/s while sampled | " + " | ".join(f"{r['rps']:,.0f}" for r in rows) + " |")
    lines.append("| p99 while sampled (ms) | " + " | ".join(f"{r['p99_ms']:.1f}" for r in rows) + " |")
    if report.get("load"):
        lines += ["", f"Without the sampler: wrk for {report['load_seconds']:g} s per level, {report['reps']} "
                  "repetitions, medians, one server at a time in alternating order.", "",
                  *peers.render_table(report["load"], report["env"]["cores"])]
    if report.get("failures"):
        lines += ["", f"Failures: {report['failures']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds sampled per server (default: 12)")
    parser.add_argument("--baseline", default=BEFORE_LANE, help="the revision to compare with (default: the last "
                        "commit before the inference lane)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the run without the sampler (default: 3)")
    parser.add_argument("--load-seconds", type=float, default=5.0, help="seconds per wrk run without the sampler "
                        "(default: 5)")
    parser.add_argument("--route", default="v2 binary", choices=[r.label for r in peers.our_routes(*peers.one_image())],
                        help="the route driven, as benchmark.peers names it (default: v2 binary)")
    parser.add_argument("--stem", default="route-profile", help="the results' file name before the machine's")
    parser.add_argument("--out", type=Path, default=None, help="folder for the results (default: results/)")
    args = parser.parse_args(argv)
    args.argv = argv
    report = run(args)
    name = f"{args.stem}-{machine_name(report['env'])}"
    print(write_results(name, render(report), report, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
