"""Side by side with the servers people would pick instead: ``python -m benchmark.peers`` (``make peers``).

Every server runs the same ONNX model (the PyTorch export's ``model.onnx`` in the BentoML store) on
the same image, on loopback. wrk drives each route at 1, 16 and 64 connections; the order of the
routes and of the levels alternates between repetitions, and the table shows medians over them,
with wrk's own CPU share (it shares the machine's cores with the server).

Status (issue 16): the harness and two servers run -- fashion-serve on every payload shape it
answers (native multipart, native JSON, v2 JSON, v2 binary) and the bare Starlette app
(``benchmark.bare_app``). The other peers of the issue (BentoML defaults, LitServe, Ray Serve,
MLServer, KServe v1 and v2) and perf_analyzer are listed in ``NOT_YET`` and reported as not run:
each needs its own venv and launcher, which this module does not have yet.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmark.bench_http import bentoml_onnx_path, multipart_body, run_wrk, start
from benchmark.report import machine_name
from fashion.env import environment_stamp
from fashion.samples import sample_paths
from service import launch

RESULTS = Path(__file__).resolve().parents[1] / "results"
LEVELS = (1, 16, 64)
BOUNDARY = "peersboundary7d3c"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
NOT_YET = ("BentoML 1.4 defaults (batchable)", "LitServe", "Ray Serve", "MLServer", "KServe v1", "KServe v2",
           "perf_analyzer (tritonclient 2.51) against every v2 server")


@dataclass(frozen=True)
class Route:
    """One payload shape on one server: what wrk posts and where."""

    label: str
    path: str
    body: bytes
    content_type: str
    header: str = ""


@dataclass(frozen=True)
class Peer:
    """A server to compare: how to start it, where it says it is ready, and its routes."""

    name: str
    version: str
    configuration: str
    command: Callable[[int], list[str]]
    env: dict[str, str]
    ready_path: str
    routes: tuple[Route, ...]
    venv: Path = field(default_factory=lambda: Path(sys.prefix))


def one_image() -> tuple[bytes, np.ndarray]:
    """The bundled sample image (PNG bytes) and its pixels."""
    from fashion.imaging import decode_image

    png = sample_paths()[0].read_bytes()
    return png, decode_image(png)


def our_routes(png: bytes, pixels: np.ndarray) -> tuple[Route, ...]:
    """fashion-serve's payload shapes for one image."""
    batch = pixels[None].astype(np.uint8)
    tensor = {"name": "images", "shape": list(batch.shape), "datatype": "UINT8"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": batch.size}}]}).encode()
    infer = "/v2/models/onnx-torch/infer"
    return (
        Route("native multipart", "/classify", multipart_body(png, BOUNDARY), MULTIPART),
        Route("native JSON", "/classify_array", json.dumps({"pixels": batch.tolist()}).encode(), "application/json"),
        Route("v2 JSON", infer, json.dumps({"inputs": [{**tensor, "data": batch.ravel().tolist()}]}).encode(),
              "application/json"),
        Route("v2 binary", infer, header + batch.tobytes(), "application/octet-stream",
              f"Inference-Header-Content-Length: {len(header)}"),
    )


def peers(workdir: Path, png: bytes, pixels: np.ndarray) -> list[Peer]:
    """The servers this module can start, each configured as used in production here."""
    import bentoml
    import uvicorn

    bin_dir = Path(sys.executable).parent
    home = launch.private_home(workdir)
    multipart = Route("multipart", "/classify", multipart_body(png, BOUNDARY), MULTIPART)
    return [
        Peer("fashion-serve", f"bentoml {bentoml.__version__}", "defaults of this repo (service/service.py)",
             lambda port: [str(bin_dir / "bentoml"), "serve", "service.service:FashionClassifier", "--host",
                           "127.0.0.1", "--port", str(port)],
             {"BENTOML_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}, "/readyz", our_routes(png, pixels)),
        Peer("bare Starlette", f"uvicorn {uvicorn.__version__}", "one worker, no access log (benchmark/bare_app.py)",
             lambda port: [str(bin_dir / "uvicorn"), "benchmark.bare_app:app", "--host", "127.0.0.1", "--port",
                           str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"],
             {"FASHION_ONNX_MODEL": str(bentoml_onnx_path())}, "/livez", (multipart,)),
    ]


def venv_size_mb(path: Path) -> float:
    """Disk use of a venv in MB (``du``, which counts hard links once)."""
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=False).stdout
    return float(out.split()[0]) if out else float("nan")


def measure_peer(peer: Peer, workdir: Path, seconds: float, reps: int) -> list[dict]:
    """Start ``peer``, run every route at every level ``reps`` times in alternating order; one row per run."""
    port = launch.free_port()
    log = workdir / f"{peer.name.replace(' ', '-')}.log"
    server = launch.Server(start(peer.command(port), peer.env, log), f"http://127.0.0.1:{port}", log)
    url = server.url
    rows = []
    try:
        server.wait_ready(path=peer.ready_path)
        bodies = {}
        for route in peer.routes:
            bodies[route.label] = workdir / f"{peer.name}-{route.label}.body".replace(" ", "-")
            bodies[route.label].write_bytes(route.body)
            run_wrk(f"{url}{route.path}", 16, 1, bodies[route.label], content_type=route.content_type,
                    header=route.header)  # warm-up, and a check that the route answers
        for rep in range(reps):
            levels = LEVELS if rep % 2 == 0 else LEVELS[::-1]
            routes = peer.routes if rep % 2 == 0 else peer.routes[::-1]
            for level in levels:
                for route in routes:
                    stats = run_wrk(f"{url}{route.path}", level, seconds, bodies[route.label],
                                    content_type=route.content_type, header=route.header)
                    rows.append({"peer": peer.name, "route": route.label, "connections": level, "rep": rep,
                                 "rps": stats["rps"], "p50_ms": stats["p50_us"] / 1e3, "p99_ms": stats["p99_us"] / 1e3,
                                 "statuses": stats["statuses"], "socket_errors": stats["socket_errors"],
                                 "wrk_cpu_cores": stats["wrk_cpu_cores"]})
                    print(f"{peer.name} / {route.label} c={level} rep {rep}: {stats['rps']:,.0f} req/s, "
                          f"p99 {stats['p99_us'] / 1e3:.1f} ms, statuses {stats['statuses']}", flush=True)
    finally:
        server.stop()
    return rows


def medians(rows: list[dict]) -> list[dict]:
    """One row per (peer, route, connections): medians over repetitions."""
    keys = dict.fromkeys((r["peer"], r["route"], r["connections"]) for r in rows)
    out = []
    for peer, route, level in keys:
        runs = [r for r in rows if (r["peer"], r["route"], r["connections"]) == (peer, route, level)]
        out.append({"peer": peer, "route": route, "connections": level, "reps": len(runs),
                    **{k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms", "wrk_cpu_cores")},
                    "non_200": sum(n for r in runs for s, n in r["statuses"].items() if s != "200"),
                    "socket_errors": sum(r["socket_errors"] for r in runs)})
    return out


def render(report: dict) -> str:
    """The Markdown report: conditions, the table, the peers, what was not run."""
    lines = [f"# Peer servers, {report['machine']}", "",
             f"Written by `python -m benchmark.peers {shlex.join(report['argv'])}` at {report['when']}; "
             f"{report['seconds']} s per run, {report['reps']} repetition(s), medians. {report['note']}", "",
             "| server | route | " + " | ".join(f"c={c} req/s, p50, p99" for c in LEVELS) + " | wrk CPU (cores) |",
             "| --- | --- | " + " | ".join("---" for _ in LEVELS) + " | --- |"]
    table = report["medians"]
    for peer, route in dict.fromkeys((r["peer"], r["route"]) for r in table):
        cells, cpu = [], []
        for level in LEVELS:
            match = [r for r in table if (r["peer"], r["route"], r["connections"]) == (peer, route, level)]
            if match:
                r = match[0]
                cells.append(f"{r['rps']:,.0f}, {r['p50_ms']:.1f} ms, {r['p99_ms']:.1f} ms"
                             + (f" ({r['non_200']} non-200)" if r["non_200"] else ""))
                cpu.append(r["wrk_cpu_cores"])
            else:
                cells.append("-")
        lines.append(f"| {peer} | {route} | " + " | ".join(cells) + f" | {statistics.median(cpu):.2f} |")
    lines += ["", "| server | version | configuration | venv (MB) |", "| --- | --- | --- | --- |"]
    lines += [f"| {p['name']} | {p['version']} | {p['configuration']} | {p['venv_mb']:,.0f} |" for p in report["peers"]]
    lines += ["", "Not run yet (no launcher in benchmark/peers.py): " + "; ".join(report["not_run"]) + "."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Requests per second by connections, one line per server and route."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    table = report["medians"]
    for peer, route in dict.fromkeys((r["peer"], r["route"]) for r in table):
        points = sorted((r["connections"], r["rps"]) for r in table if (r["peer"], r["route"]) == (peer, route))
        ax.plot([c for c, _ in points], [v for _, v in points], marker="o", label=f"{peer}: {route}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("wrk connections")
    ax.set_ylabel("requests/s (median)")
    ax.set_title(f"Peer servers, {report['machine']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per wrk run (default: 15)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, medians reported (default: 3)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these servers (default: all)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. that the machine was busy")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for peers-<machine>.{md,json,png}")
    args = parser.parse_args(argv)
    stamp = environment_stamp()
    machine = machine_name(stamp, None)
    png, pixels = one_image()
    rows, described = [], []
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for peer in peers(Path(tmp), png, pixels):
            if args.only and peer.name not in args.only:
                continue
            rows += measure_peer(peer, Path(tmp), args.seconds, args.reps)
            described.append({"name": peer.name, "version": peer.version, "configuration": peer.configuration,
                              "venv_mb": venv_size_mb(peer.venv)})
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine, "environment": stamp,
              "argv": list(argv if argv is not None else sys.argv[1:]), "seconds": args.seconds, "reps": args.reps,
              "note": args.note, "peers": described, "not_run": list(NOT_YET), "runs": rows, "medians": medians(rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"peers-{machine}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(render(report))
    plot(report, stem.with_suffix(".png"))
    print(f"wrote {stem}.md, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
