"""What API keys cost, and whether one key's flood slows another: ``python -m benchmark.keys cost|isolation``.

``cost``: the peers harness (wrk at 1, 16 and 64 connections, repetitions in alternating order, medians) on three
servers of fashion-serve only: this checkout with no keys, this checkout with keys (each request carries a valid
key), and a baseline revision from before keys existed, which git extracts into a temporary folder. Written to
``results/keys-cost-<machine>.{md,json}``.

``isolation``: one server with two keys. The calm key's latency (wrk, one connection) alone, while the other key
floods at a fixed rate far past its limit (wrk, paced), and while it floods at line rate (wrk); repeated, in
alternating order. Both generators are wrk, the cheapest client at hand: on a small host they share the server's
cores, and a costly generator would be measured as the server's unfairness.
Written to ``results/keys-isolation-<machine>.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from benchmark import peers
from benchmark.harness import REPO, command_line, machine_name, multipart_body, run_wrk, served, write_results
from fashion.env import environment_stamp
from service.auth import new_key

# The last commit before API keys existed.
BEFORE_KEYS = "31ca1b29c4e39f81069a668545f874b7950123b2"
# Routes without a header of their own (wrk sends one extra header: here, the key).
COST_ROUTES = ("native multipart", "v2 JSON")
CONDITIONS = ("alone", "paced flood", "line-rate flood")


def extract(revision: str, folder: Path) -> tuple[Path, str]:
    """``revision`` of this repository extracted into ``folder``; its commit id."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", revision], capture_output=True, text=True,
                            check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder, commit


def serve_command(code: Path):
    """``bentoml serve`` of the service in ``code``, which comes first on the import path."""
    return lambda bin_dir, port, workdir: ["env", f"PYTHONPATH={code}", str(bin_dir / "bentoml"), "serve",
                                           "service.service:FashionClassifier", "--working-dir", str(code),
                                           "--host", "127.0.0.1", "--port", str(port)]


def cost_servers(base: Path, commit: str, key: str, key_line: str) -> list[peers.Peer]:
    """This checkout without and with keys, and the baseline revision, on the routes of :data:`COST_ROUTES`."""
    routes = tuple(r for r in peers.our_routes(*peers.one_image()) if r.label in COST_ROUTES)
    keyed = tuple(dataclasses.replace(r, header=f"Authorization: Bearer {key}") for r in routes)
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    return [
        peers.Peer("keys off", "this checkout, no keys configured", serve_command(REPO), "/readyz", routes, env=quiet),
        peers.Peer("keys on", "this checkout, one key configured (FASHION_API_KEYS), sent with every request",
                   serve_command(REPO), "/readyz", keyed, env={**quiet, "FASHION_API_KEYS": key_line}),
        peers.Peer("baseline", f"commit {commit[:12]}, before keys existed", serve_command(base), "/readyz", routes,
                   env=quiet),
    ]


def run_cost(args: argparse.Namespace) -> dict:
    key, entry = new_key(["inference"])
    with tempfile.TemporaryDirectory(prefix="keys-") as tmp:
        base, commit = extract(args.baseline, Path(tmp) / "baseline")
        args.no_perf_analyzer = True
        results = peers.run_all(cost_servers(base, commit, key, entry.line()), args, Path(tmp))
    return {"baseline": {"revision": args.baseline, "commit": commit}, **results}


def render_cost(report: dict) -> str:
    lines = [f"# API keys: what they cost, {report['machine']}", "",
             f"Written by `{report['command']}` at {report['when']}; {report['seconds']} s per wrk run, "
             f"{report['reps']} repetitions, medians, one image per request, one server at a time, the three in "
             f"alternating order. {report['note']}", "", *peers.render_table(report["medians"], report["cores"]), ""]
    lines += [f"- {p['name']}: {p['configuration']}" for p in report["peers"]]
    lines += switch_cost_lines(report, "keys", ("keys off", "keys on", "baseline"))
    return "\n".join(lines) + "\n"


def switch_cost_lines(report: dict, what: str, names: tuple[str, str, str]) -> list[str]:
    """The part of a cost report shared by every on/off switch (keys, tracing): per route and level, requests/s
    on / off and off / baseline; the spread between repetitions; the servers that did not run. ``names``: the
    servers off, on and the baseline."""
    lines = ["", f"Requests/s, {what} on / {what} off and {what} off / baseline, per route and level (medians):", "",
             "| route | connections | on / off | off / baseline |", "| --- | --- | --- | --- |"]
    table = {(r["peer"], r["route"], r["connections"]): r["rps"] for r in report["medians"]}
    for route in COST_ROUTES:
        for level in peers.LEVELS:
            off, on, base = (table.get((name, route, level)) for name in names)
            if off and on and base:
                lines.append(f"| {route} | {level} | {on / off:.3f} | {off / base:.3f} |")
    spread = spreads(report["runs"])
    lines += ["", "Spread between repetitions of the same server (largest / smallest requests/s, median over "
              f"routes and levels): {', '.join(f'{name} {value:.2f}' for name, value in spread.items())}."]
    if report["failures"]:
        lines += ["", "## Did not run", ""] + [f"- {name}: {why}" for name, why in report["failures"].items()]
    return lines


def spreads(rows: list[dict]) -> dict[str, float]:
    """Per server, the median over (route, level) of the largest / smallest requests/s between repetitions."""
    out = {}
    for name in dict.fromkeys(r["peer"] for r in rows):
        groups: dict[tuple, list[float]] = {}
        for r in rows:
            if r["peer"] == name:
                groups.setdefault((r["route"], r["connections"]), []).append(r["rps"])
        out[name] = statistics.median(max(v) / min(v) for v in groups.values() if len(v) > 1 and min(v) > 0)
    return out


def measure_isolation(url: str, calm: str, flood: str, body_file: Path,
                      args: argparse.Namespace) -> list[dict]:
    """Per repetition and condition (order alternating): the calm key's latency (wrk, one connection: a client that
    waits for each answer), alone or while the other key floods, either paced at ``--flood-per-s`` or at line rate
    (a second wrk). Each generator is a process of its own, so neither holds up the other's clock."""
    rows = []
    for rep in range(args.reps):
        for condition in CONDITIONS if rep % 2 == 0 else CONDITIONS[::-1]:
            with ThreadPoolExecutor(1) as pool:
                flooding = None
                if condition == "paced flood":
                    flooding = pool.submit(run_wrk, f"{url}/classify", args.flood_connections, args.seconds + 2,
                                           body_file, boundary=peers.BOUNDARY, header=f"Authorization: Bearer {flood}",
                                           per_s=args.flood_per_s)
                elif condition == "line-rate flood":
                    flooding = pool.submit(run_wrk, f"{url}/classify", args.flood_connections, args.seconds + 2,
                                           body_file, boundary=peers.BOUNDARY, header=f"Authorization: Bearer {flood}")
                stats = run_wrk(f"{url}/classify", 1, args.seconds, body_file, boundary=peers.BOUNDARY,
                                header=f"Authorization: Bearer {calm}")
                flood_stats = flooding.result() if flooding else None
            rows.append(isolation_row(rep, condition, stats, flood_stats))
            print(f"rep {rep} {condition}: calm p99 {rows[-1]['calm_p99_ms']:.2f} ms, statuses {stats['statuses']}; "
                  f"flood statuses {flood_stats and flood_stats['statuses']}", flush=True)
    return rows


def isolation_row(rep: int, condition: str, calm: dict, flood: dict | None) -> dict:
    out = {"rep": rep, "condition": condition, "calm_rps": calm["rps"], "calm_p50_ms": calm["p50_us"] / 1e3,
           "calm_p99_ms": calm["p99_us"] / 1e3, "calm_statuses": calm["statuses"]}
    if flood:
        out |= {"flood_per_s": flood["rps"], "flood_statuses": flood["statuses"],
                "flood_429_without_retry_after": flood["retry_after_missing"]}
    return out


def run_isolation(args: argparse.Namespace) -> dict:
    calm_key, calm = new_key(["inference"])
    flood_key, flood = new_key(["inference"], args.flood_rate)
    body = multipart_body(peers.one_image()[0], peers.BOUNDARY)
    env = {"FASHION_API_KEYS": f"{calm.line()}\n{flood.line()}", "FASHION_BACKENDS": "onnx-torch"}
    with tempfile.TemporaryDirectory(prefix="keys-") as tmp, served(Path(tmp), env) as server:
        body_file = Path(tmp) / "upload.body"
        body_file.write_bytes(body)
        run_wrk(f"{server.url}/classify", 4, 2, body_file, boundary=peers.BOUNDARY,
                header=f"Authorization: Bearer {calm_key}")  # warm-up
        rows = measure_isolation(server.url, calm_key, flood_key, body_file, args)
    p99 = {c: statistics.median(r["calm_p99_ms"] for r in rows if r["condition"] == c) for c in CONDITIONS}
    return {"flood_rate": args.flood_rate, "flood_per_s": args.flood_per_s,
            "flood_connections": args.flood_connections, "rows": rows, "calm_p99_ms": p99,
            "ratios": {c: p99[c] / p99["alone"] for c in CONDITIONS[1:]}}


def render_isolation(report: dict) -> str:
    p99, ratios = report["calm_p99_ms"], report["ratios"]
    lines = [f"# API keys: one key's flood and another key's latency, {report['machine']}", "",
             f"Written by `{report['command']}` at {report['when']}. One server (onnx-torch), two keys. The calm "
             f"key: wrk, one connection (each request waits for the answer before it), one image per request to "
             f"/classify, {report['seconds']:g} s: alone; while the flooding key (rate {report['flood_rate']}) sends "
             f"{report['flood_per_s']:g} requests/s (wrk, {report['flood_connections']} connections, each pausing "
             f"between requests); and while it floods at line rate (wrk, "
             f"{report['flood_connections']} connections, no pause). {report['reps']} repetitions, the conditions in "
             f"alternating order. {report['note']}", "",
             f"Calm key's p99, median over repetitions: {p99['alone']:.2f} ms alone; "
             f"{p99['paced flood']:.2f} ms during the paced flood (**{ratios['paced flood']:.2f}x**); "
             f"{p99['line-rate flood']:.2f} ms during the line-rate flood (**{ratios['line-rate flood']:.2f}x**).", "",
             "| rep | condition | calm req/s | calm p50 (ms) | calm p99 (ms) | calm statuses | flood req/s | "
             "flood statuses | 429 without Retry-After |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        flood = (f"{r['flood_per_s']:,.0f} | {r['flood_statuses']} | {r['flood_429_without_retry_after']} |"
                 if "flood_per_s" in r else "- | - | - |")
        lines.append(f"| {r['rep']} | {r['condition']} | {r['calm_rps']:,.0f} | {r['calm_p50_ms']:.2f} | "
                     f"{r['calm_p99_ms']:.2f} | {r['calm_statuses']} | {flood}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["cost", "isolation"])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per wrk run (default: 10)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, medians reported (default: 3)")
    parser.add_argument("--baseline", default=BEFORE_KEYS, help="cost: the revision to compare with (default: the "
                        "last commit before keys)")
    parser.add_argument("--flood-rate", default="50/s", help="isolation: the flooding key's rate (default: 50/s)")
    parser.add_argument("--flood-per-s", type=float, default=1000.0,
                        help="isolation: the paced flood's requests per second (default: 1000)")
    parser.add_argument("--flood-connections", type=int, default=16,
                        help="isolation: each flood's wrk connections (default: 16)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. that the machine was busy")
    args = parser.parse_args(argv)
    args.cache = peers.CACHE
    stamp = environment_stamp()
    machine = machine_name(stamp)
    results = {"cost": run_cost, "isolation": run_isolation}[args.what](args)
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine, "environment": stamp,
              "cores": stamp["cores"], "command": command_line("benchmark.keys", argv), "seconds": args.seconds,
              "reps": args.reps, "note": args.note, **results}
    render = {"cost": render_cost, "isolation": render_isolation}[args.what]
    print(f"wrote {write_results(f'keys-{args.what}-{machine}', render(report), report)}")
    return 1 if results.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
