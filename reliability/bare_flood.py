"""The same 1,024-connection flood against the bare Starlette app and the service: ``python -m reliability.bare_flood``.

Tells which part of the latency tail under a flood is uvicorn's event loop (both
show it) and which is the service's (only it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmark.bench_http import run_wrk, start_servers, stop_servers
from reliability.harness import BOUNDARY, upload_body

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.bare_flood", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each flood")
    parser.add_argument("--connections", type=int, default=1024, help="wrk connections")
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability-bare-flood.txt", help="the two lines")
    args = parser.parse_args(argv)
    lines = flood_both(args.seconds, args.connections)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"report: {args.out}")
    return 0


def flood_both(seconds: float, connections: int) -> list[str]:
    """One line per server: the same flood against the bare app, then the service."""
    lines = []
    work = Path(tempfile.mkdtemp(prefix="bare-flood-"))
    servers = start_servers(work, ("onnx-torch",))
    body_file, _ = upload_body(work)
    try:
        for name in ("bare", "bentoml"):
            stats = run_wrk(f"{servers[name][1]}/classify", connections, seconds, body_file, BOUNDARY, timeout=60,
                            threads=2)
            lines.append(f"{name:8s} {connections} connections, {seconds:g} s: {stats['rps']:,.0f} responses/s, "
                         f"p50 {stats['p50_us'] / 1e3:,.0f} ms, p90 {stats['p90_us'] / 1e3:,.0f} ms, "
                         f"p99 {stats['p99_us'] / 1e3:,.0f} ms, max {stats['max_us'] / 1e3:,.0f} ms, "
                         f"statuses {stats['statuses']}, socket errors {stats['errors']}")
            print(lines[-1], flush=True)
    finally:
        stop_servers(servers)
    return lines


if __name__ == "__main__":
    sys.exit(main())
