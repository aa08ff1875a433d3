"""The reliability scenarios at full length: ``python -m benchmark.reliability [SCENARIO ...]`` (``make reliability``).

Scenarios: overload (30 s flood), shutdown, crash, clients (misbehaving), soak (30 min;
only when named, ``make soak``). Each runs against its own ``bentoml serve`` of the
models in the BentoML store. Figures go to ``results/reliability.json`` (merged with
earlier runs, so the soak can be recorded separately) and ``results/reliability.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmark.harness import RESULTS, served, write_results
from benchmark.reliability import scenarios
from fashion.env import environment_stamp

DEFAULT = ("overload", "shutdown", "crash", "clients")


def run_scenario(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start a fresh server, hurt it one way, stop it; the scenario's figures."""
    from fashion.data import find_data_dir, load_fashion_mnist

    with served(workdir) as server:
        if name == "overload":
            images = next(find_data_dir(download=False).glob("t10k-images-idx3-ubyte*"))
            return scenarios.overload(server, workdir, seconds=args.seconds, connections=args.connections,
                                      batch_input=images, batch_items=10_000)
        if name == "soak":
            return scenarios.soak(server, workdir, minutes=args.minutes, load=args.load)
        if name == "clients":
            return scenarios.misbehaving_clients(server, workdir)
        pixels = load_fashion_mnist(download=False).test_images[:1024]
        return scenarios.shutdown(server, pixels) if name == "shutdown" else scenarios.crash(server, pixels)


def summarize(name: str, f: dict[str, Any]) -> list[str]:
    """The figures that answer the scenario's question, as bullet points."""
    if name == "overload":
        job = f.get("batch_job", {})
        return [
            f"- {f['connections']} connections, no pause, {f['seconds']} s: {f['responses']:,} responses "
            f"({f['offered_rps']:,}/s; capacity measured just before at 32 clients: {f['sustainable_rps']:,}/s)",
            f"- by status: {f['statuses']}; other statuses: {f['unexpected_statuses'] or 'none'}; "
            f"429/503 without Retry-After: {f['retry_after_missing']}",
            f"- requests without an answer (wrk socket errors): {sum(f['socket_errors'].values())} "
            f"{f['socket_errors']}",
            f"- latency under the flood: p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms, max {f['max_ms']:.0f} ms",
            f"- probes on the API port during the flood: {f['probes']['statuses']}, p99 {f['probes']['p99_s']:.2f} s, "
            f"slowest {f['probes']['max_s']:.2f} s",
            f"- probes on the health port (FASHION_HEALTH_PORT): {f['probes_health_port']['statuses']}, p99 "
            f"{f['probes_health_port']['p99_s']:.3f} s, slowest {f['probes_health_port']['max_s']:.3f} s",
            f"- back to normal (20 requests in a row each under {f['normal_ms']:.1f} ms; idle p50 "
            f"{f['baseline_p50_ms']:.2f} ms) {f['recovery_s']:.2f} s after the flood",
            f"- batch CLI over the 10,000 test images during the flood: exit {job.get('exit_code')}, "
            f"rows {job.get('rows')}, lost {job.get('lost')}, duplicates {job.get('duplicates')}",
        ]
    if name == "shutdown":
        return [
            f"- requests in flight when SIGTERM arrived: {f['in_flight_at_signal']}",
            f"- the worker, as it stopped: {f['server_at_exit']} (requests let in, answered in full, in progress); "
            f"answers the clients got: {f['answers_to_clients']}",
            f"- requests sent after it: {f['sent_after_signal']}; of those, sent after readiness failed: "
            f"{f['sent_after_readiness_failed']}",
            f"- readiness failed {f['readiness_failed_after_s']:.3f} s after the signal; the process exited "
            f"{f['exit_after_s']:.2f} s after it with code {f['exit_code']}",
        ]
    if name == "crash":
        client = f["retrying_client"]
        return [
            f"- requests in flight when the worker got SIGKILL: {f['in_flight_outcomes']}, all ended within "
            f"{f['in_flight_slowest_s']:.2f} s",
            f"- worker {f['killed_pid']} replaced by {f['replacement_pid']}; ready again "
            f"{f['ready_again_after_s']:.1f} s after the kill",
            f"- a retrying client started at the kill got {client['answers']} answers after {client['retries']} "
            f"retries, {client['after_s']:.1f} s",
        ]
    if name == "clients":
        return [
            f"- {f['aborted_uploads']} uploads cut off halfway, {f['slow_senders']} senders dripping a byte per "
            f"0.2 s, {f['idle_connections']} silent connections, held {f['hold_s']} s",
            f"- normal requests meanwhile: {f['requests_meanwhile']}, p50 {f['meanwhile_p50_ms']:.1f} ms, "
            f"max {f['meanwhile_max_ms']:.0f} ms; idle connections closed by the server: {f['idle_closed_by_server']}",
            f"- worker before / during / after: open files {f['vitals_before']['open_fds']} / "
            f"{f['vitals_during']['open_fds']} / {f['vitals_after']['open_fds']}, memory "
            f"{f['vitals_before']['rss_mib']:.0f} / {f['vitals_during']['rss_mib']:.0f} / "
            f"{f['vitals_after']['rss_mib']:.0f} MiB",
        ]
    if name == "soak":
        return [
            f"- {f['minutes']} min open loop at {f['rate_rps']:,} req/s (70% of the {f['capacity_rps']:,} req/s "
            f"measured first): {f['sent']:,} requests, {f['errors']} errors",
            f"- memory growth after warm-up (last sixth against first sixth of the windows): "
            f"{f['memory_growth']:+.1%}; p99 drift: {f['p99_drift']:+.1%}",
            f"- p99 per minute: median {f['p99_ms_median']:.1f} ms, p90 {f['p99_ms_p90']:.1f} ms, "
            f"max {f['p99_ms_max']:.1f} ms",
            "- per minute (p99 ms / server CPU µs per request / host steal s): " + ", ".join(
                f"{w['p99_ms']:.0f}/{w.get('server_cpu_us_per_request', float('nan')):.0f}/"
                f"{w.get('host_steal_s', float('nan')):.1f}" for w in f["windows"]),
        ]
    return []


def render(results: dict[str, Any]) -> str:
    """Markdown: per scenario the key figures, then every figure as JSON."""
    lines = ["# Reliability runs", "", "Written by `python -m benchmark.reliability` (`make reliability`; the soak: "
             "`make soak`). Each scenario ran against its own `bentoml serve` of the exported models.", ""]
    for name, entry in results.items():
        lines += [f"## {name}", "", f"{entry['when']}, {entry['machine']}", "", *summarize(name, entry["figures"]),
                  "", "<details><summary>all figures</summary>", "", "```json",
                  json.dumps(entry["figures"], indent=1, default=str)[:8000], "```", "", "</details>", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join([*DEFAULT, 'soak'])} (default: all but soak)")
    parser.add_argument("--seconds", type=float, default=30.0, help="overload flood length (default: 30)")
    parser.add_argument("--connections", type=int, default=1024, help="flood connections (default: 1024)")
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length (default: 30)")
    parser.add_argument("--load", type=float, default=0.7, help="soak rate as a share of capacity (default: 0.7)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of reliability.json and .md")
    args = parser.parse_args(argv)
    args.scenarios = args.scenarios or list(DEFAULT)
    unknown = sorted(set(args.scenarios) - {*DEFAULT, "soak"})
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}")

    path = args.out / "reliability.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    stamp = environment_stamp()
    machine = f"{stamp.get('cpu', '?')}, {stamp.get('cores', '?')} cores"
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        for name in args.scenarios:
            print(f"{name}...", flush=True)
            figures = run_scenario(name, args, Path(tmp))
            print(json.dumps(figures, indent=1, default=str)[:2000], flush=True)
            results[name] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine,
                             "figures": figures}
            write_results("reliability", data=results, folder=args.out)
    report = write_results("reliability", render(results), results, args.out)
    print(f"wrote {report} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
