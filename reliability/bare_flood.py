"""The same 1,024-connection flood against the bare Starlette app and the service: ``python -m reliability.bare_flood``.

Tells which part of the latency tail under a flood is uvicorn's event loop (both
show it) and which is the service's (only it).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmark.bench_http import run_wrk, start_servers, stop_servers
from reliability.harness import BOUNDARY, upload_body


def main(seconds: float = 15.0, connections: int = 1024) -> int:
    work = Path(tempfile.mkdtemp(prefix="bare-flood-"))
    servers = start_servers(work, ("onnx-torch",))
    body_file, _ = upload_body(work)
    try:
        for name in ("bare", "bentoml"):
            stats = run_wrk(f"{servers[name][1]}/classify", connections, seconds, body_file, BOUNDARY, timeout=60,
                            threads=2)
            print(f"{name:8s} {connections} connections, {seconds:g} s: {stats['rps']:,.0f} responses/s, "
                  f"p50 {stats['p50_us'] / 1e3:,.0f} ms, p90 {stats['p90_us'] / 1e3:,.0f} ms, "
                  f"p99 {stats['p99_us'] / 1e3:,.0f} ms, max {stats['max_us'] / 1e3:,.0f} ms, "
                  f"statuses {stats['statuses']}, socket errors {stats['errors']}", flush=True)
    finally:
        stop_servers(servers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
