"""HTTP benchmark of the service against the bare-Starlette ceiling: ``python -m benchmark.bench_http``.

Starts the real BentoML service and the bare app (``benchmark.bare_app``: same decode,
same ONNX model, same JSON), then drives each with wrk (closed loop, one image per
request) at each concurrency: requests/s, p50/p90/p99 latency, answers by status.
Needs ``wrk`` (``apt-get install wrk``) and exported models in the BentoML store.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from fashion.backends import BACKENDS, MODEL_NAMES
from fashion.env import environment_stamp
from fashion.samples import sample_paths
from service import launch
from service.launch import free_port

REPO = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("wrk_upload.lua")


def multipart_body(image: bytes, boundary: str) -> bytes:
    """One ``images`` file part, as browsers and curl send it."""
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def run_wrk(url: str, connections: int, seconds: float, body_file: Path, boundary: str = "",
            content_type: str | None = None, timeout: float = 10.0, threads: int = 1, header: str = "") -> dict:
    """One closed-loop wrk run; returns its counts, latency percentiles and wrk's own CPU use (cores).

    ``header``: one more request header, ``"Name: value"``.
    """
    env = {**os.environ, "WRK_BODY_FILE": str(body_file), "WRK_BOUNDARY": boundary, "WRK_HEADER": header}
    if content_type:
        env["WRK_CONTENT_TYPE"] = content_type
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", f"{timeout:g}s",
         "-s", str(LUA), url],
        capture_output=True, text=True, env=env, check=True,
    )
    match = re.search(r"^WRK_JSON (.*)$", result.stdout, re.M)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{result.stdout}\n{result.stderr}")
    stats = json.loads(match.group(1))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds_run = stats["duration_us"] / 1e6
    stats["rps"] = stats["requests"] / seconds_run
    stats["wrk_cpu_cores"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds_run
    return stats


def start_servers(workdir: Path, backends: tuple[str, ...] | None = None) -> dict[str, tuple[subprocess.Popen, str]]:
    """The real service and the bare app on free loopback ports, ready: ``{name: (process, base URL)}``."""
    bin_dir = Path(sys.executable).parent
    bare_port = free_port()
    bento = launch.start(workdir, env={"FASHION_BACKENDS": ",".join(backends)} if backends else None)
    bare = launch.Server(start([str(bin_dir / "uvicorn"), "benchmark.bare_app:app", "--port", str(bare_port),
                                "--workers", "1", "--no-access-log", "--log-level", "warning"],
                               {"FASHION_ONNX_MODEL": str(bentoml_onnx_path())}, workdir / "bare.log"),
                         f"http://127.0.0.1:{bare_port}", workdir / "bare.log")
    servers = {"bare": (bare.proc, bare.url), "bentoml": (bento.proc, bento.url)}
    try:
        bento.wait_ready()
        bare.wait_ready(path="/livez")
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: dict[str, tuple[subprocess.Popen, str]]) -> None:
    for proc, _ in servers.values():
        proc.terminate()
    for proc, _ in servers.values():
        proc.wait(30)


def bentoml_onnx_path() -> Path:
    """The PyTorch export's ONNX file in the BentoML store (what the default backend serves)."""
    import bentoml

    return Path(bentoml.models.get(f"{MODEL_NAMES['torch']}:latest").path) / "model.onnx"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench_http", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each target")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "service-bench-cpu.json",
                        help="the results as JSON; the printed table goes beside it as .txt")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    image = sample_paths()[9].read_bytes()
    boundary = uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix="fashion-bench-"))
    body_file = workdir / "body.bin"
    body_file.write_bytes(multipart_body(image, boundary))
    servers = start_servers(workdir)
    bento, bare = servers["bentoml"][1], servers["bare"][1]
    results, lines = [], []
    try:
        targets = [("bare-starlette", "onnx-torch", f"{bare}/classify")] + [
            ("bentoml", b, f"{bento}/classify?backend={b}") for b in args.backends]
        for server, backend, url in targets:
            run_wrk(url, max(args.concurrency), args.warmup, body_file, boundary)
            for connections in args.concurrency:
                stats = run_wrk(url, connections, args.seconds, body_file, boundary)
                results.append({"server": server, "backend": backend, "concurrency": connections, **stats})
                lines.append(f"{server:<15} {backend:<11} c={connections:<3} {stats['rps']:>8.0f} req/s  "
                             f"p50 {stats['p50_us'] / 1000:6.2f} ms  p99 {stats['p99_us'] / 1000:7.2f} ms  "
                             f"status {stats['statuses']}  socket errors {stats['socket_errors']}")
                print(lines[-1], flush=True)
    finally:
        stop_servers(servers)
    fractions = summary(results)
    print("\n".join(fractions))
    lines += fractions
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                    "environment": environment_stamp(), "seconds": args.seconds,
                                    "results": results}, indent=2) + "\n")
    args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"report: {args.out}, {args.out.with_suffix('.txt')}")
    return 0


def summary(results: list[dict]) -> list[str]:
    """Each BentoML figure as a fraction of the bare app at the same concurrency, as lines."""
    bare = {r["concurrency"]: r["rps"] for r in results if r["server"] == "bare-starlette"}
    lines = ["", "BentoML single-image throughput as a fraction of the bare Starlette app (same work):"]
    for r in results:
        if r["server"] == "bentoml":
            errors = sum(v for k, v in r["statuses"].items() if not k.startswith("2")) + r["socket_errors"]
            lines.append(f"  {r['backend']:<11} c={r['concurrency']:<3} {r['rps'] / bare[r['concurrency']]:.2f}"
                         f"  (non-2xx + socket errors: {errors})")
    return lines


if __name__ == "__main__":
    sys.exit(main())
