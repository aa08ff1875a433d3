"""Side by side with the servers people would pick instead: ``python -m benchmark.peers`` (``make peers``).

Every server runs the same ONNX model (the PyTorch export's ``model.onnx`` in the BentoML store),
with ONNX Runtime, on the same image, on loopback: fashion-serve on every payload shape it answers
(native multipart, native JSON, v2 JSON, v2 binary), the bare apps doing the same work on each payload kind
(raw uint8 body, JSON pixels, a multipart PNG: ``benchmark.bare_app``), the HTTP stack's ceiling (a fixed
answer under the same uvicorn), and BentoML with defaults, LitServe, Ray Serve, MLServer and KServe (v1 and
v2), each configured as its docs recommend for throughput (``benchmark/peer_servers/``, one file each). The
report sets each of our routes beside the bare app that reads the same payload (:data:`SAME_WORK`).

Each peer framework is installed from the package index into its own venv under ``--cache``
(created on first use, reused after; the same onnxruntime and numpy as ours). Only one server runs
at a time. In each repetition every server is started, warmed up, driven by wrk at 1, 16 and 64
connections, and stopped; the order of the servers, the levels and the routes reverses from one
repetition to the next, and the table shows medians over repetitions, with wrk's own CPU use (it
shares the machine's cores with the server). perf_analyzer (Triton's load generator, from the
``tritonclient`` wheel) then runs against every v2 server, or the report says exactly why not.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmark.harness import (
    REPO,
    RESULTS,
    Server,
    free_port,
    machine_name,
    multipart_body,
    private_home,
    run_wrk,
    start_process,
    write_results,
)
from benchmark.http import bentoml_onnx_path
from benchmark.peer_servers.common import MAX_BATCH_SIZE, MODEL_ENV, MODEL_NAME, PORT_ENV
from fashion.env import environment_stamp
from fashion.samples import sample_paths

CACHE = Path.home() / ".cache" / "fashion-serve" / "peers"
LEVELS = (1, 16, 64)
BOUNDARY = "peersboundary7d3c"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"
# Versions pinned so that a re-run measures the same servers (the first table used these).
PINS = {"bentoml": "bentoml==1.4.40", "litserve": "litserve==0.2.19", "ray": "ray[serve]==2.60.0",
        "mlserver": "mlserver==1.7.1", "kserve": "kserve==0.21.0"}
PERF_ANALYZER = ("tritonclient[http]==2.51.0", "nvidia-cuda-runtime-cu12")
# perf_analyzer repeats a window until 3 agree within this many percent; on a machine shared with other
# jobs its default (10) rarely settles, so accept windows that differ up to 3x and report their figures.
PERF_STABILITY_PERCENT = 200
START_TIMEOUT_S = 300.0  # Ray and MLServer start several processes; the machine may be busy
# Our route and the bare app that does the same work on the same payload ((peer, route) each): the report gives
# ours as a multiple of it (req/s) and the difference of p99. The last row: the HTTP stack's ceiling.
SAME_WORK = (
    (("fashion-serve", "v2 binary"), ("bare raw body", "raw uint8")),
    (("fashion-serve", "v2 binary, probabilities"), ("bare raw body", "raw uint8")),
    (("fashion-serve", "native JSON"), ("bare JSON pixels", "JSON pixels")),
    (("fashion-serve", "native multipart"), ("bare multipart PNG", "multipart PNG")),
    (("fashion-serve", "v2 binary, probabilities"), ("HTTP ceiling", "fixed answer")),
)


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
    """A server to compare: its packages, how to start it, where it says it is ready, and its routes.

    ``command(bin_dir, port, workdir)`` is the command line, ``bin_dir`` the venv's ``bin``.
    ``packages`` empty: it runs in this process's venv. ``v2_model``: the model perf_analyzer asks for.
    """

    name: str
    configuration: str
    command: Callable[[Path, int, Path], list[str]]
    ready_path: str
    routes: tuple[Route, ...]
    packages: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    v2_model: str | None = None

    def venv(self, cache: Path) -> Path:
        """Where its venv is: this process's, or one per pinned framework under ``cache``."""
        return cache / self.packages[0].replace("[serve]", "").replace("==", "-") if self.packages \
            else Path(sys.prefix).resolve()


def one_image() -> tuple[bytes, np.ndarray]:
    """The bundled sample image (PNG bytes) and its pixels."""
    from fashion.imaging import decode_image

    png = sample_paths()[0].read_bytes()
    return png, decode_image(png)


def v2_json(pixels: np.ndarray) -> bytes:
    """A v2 inference request with one ``UINT8[1, 28, 28]`` input as JSON data."""
    return json.dumps({"inputs": [{"name": "images", "shape": [1, *pixels.shape], "datatype": "UINT8",
                                   "data": pixels.ravel().tolist()}]}).encode()


def our_routes(png: bytes, pixels: np.ndarray) -> tuple[Route, ...]:
    """fashion-serve's payload shapes for one image."""
    batch = pixels[None].astype(np.uint8)
    tensor = {"name": "images", "shape": list(batch.shape), "datatype": "UINT8"}
    inputs = [{**tensor, "parameters": {"binary_data_size": batch.size}}]
    header = json.dumps({"inputs": inputs}).encode()
    # The work the peers do: the probabilities and no "not clothing" score (ours also send logits and that
    # score when no output is named, as the v2 protocol says).
    header_probabilities = json.dumps({"inputs": inputs, "outputs": [{"name": "probabilities"}]}).encode()
    infer = "/v2/models/onnx-torch/infer"
    return (
        Route("native multipart", "/classify", multipart_body(png, BOUNDARY), MULTIPART),
        Route("native JSON", "/classify_array", json.dumps({"pixels": batch.tolist()}).encode(), JSON),
        Route("v2 JSON", infer, v2_json(pixels), JSON),
        Route("v2 binary", infer, header + batch.tobytes(), "application/octet-stream",
              f"Inference-Header-Content-Length: {len(header)}"),
        Route("v2 binary, probabilities", infer, header_probabilities + batch.tobytes(), "application/octet-stream",
              f"Inference-Header-Content-Length: {len(header_probabilities)}"),
    )


def write_mlserver_settings(folder: Path, port: int) -> Path:
    """MLServer's server and model settings: our port, free gRPC and metrics ports, adaptive batching."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(
        {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
         "metrics_port": free_port()}))
    (folder / "model-settings.json").write_text(json.dumps(
        {"name": MODEL_NAME, "implementation": "benchmark.peer_servers.mlserver_peer.OnnxClassifier",
         "max_batch_size": MAX_BATCH_SIZE, "max_batch_time": 0.005}))
    return folder


def peer_module(name: str) -> Callable[[Path, int, Path], list[str]]:
    """The command that runs ``benchmark/peer_servers/<name>.py`` with the venv's Python."""
    return lambda bin_dir, port, workdir: [str(bin_dir / "python"), "-m", f"benchmark.peer_servers.{name}"]


def uvicorn_app(app: str) -> Callable[[Path, int, Path], list[str]]:
    """The command that serves ``benchmark.bare_app:<app>`` with uvicorn: one worker, httptools, no access log."""
    return lambda bin_dir, port, workdir: [str(bin_dir / "uvicorn"), f"benchmark.bare_app:{app}", "--host",
                                           "127.0.0.1", "--port", str(port), "--workers", "1", "--http", "httptools",
                                           "--no-access-log", "--log-level", "warning"]


def bare_peers(png: bytes, pixels: np.ndarray) -> list[Peer]:
    """The bare apps (benchmark.bare_app), one per payload kind, each doing our work and nothing else, and the
    HTTP stack's ceiling (a fixed answer); each is compared with our route that reads the same payload."""
    batch = pixels[None].astype(np.uint8)
    configuration = "Starlette under uvicorn (httptools), one worker, no access log; decode, session.run, " \
                    "label and probabilities as JSON (benchmark/bare_app.py)"
    return [
        Peer("bare raw body", configuration, uvicorn_app("raw_app"), "/livez",
             (Route("raw uint8", "/classify", batch.tobytes(), "application/octet-stream"),)),
        Peer("bare JSON pixels", configuration, uvicorn_app("json_app"), "/livez",
             (Route("JSON pixels", "/classify", json.dumps({"pixels": batch.tolist()}).encode(), JSON),)),
        Peer("bare multipart PNG", configuration, uvicorn_app("multipart_app"), "/livez",
             (Route("multipart PNG", "/classify", multipart_body(png, BOUNDARY), MULTIPART),)),
        Peer("HTTP ceiling", "a plain ASGI app answering a fixed JSON body under uvicorn (httptools), one worker, "
             "no access log (benchmark/bare_app.py)", uvicorn_app("ceiling_app"), "/livez",
             (Route("fixed answer", "/classify", batch.tobytes(), "application/octet-stream"),)),
    ]


def peers(png: bytes, pixels: np.ndarray) -> list[Peer]:
    """Every server, each configured as its docs recommend for throughput on a small CPU model."""
    image = pixels.tolist()
    listed = json.dumps({"pixels": image}).encode()
    return [
        Peer("fashion-serve", "defaults of this repo (service/service.py)",
             lambda bin_dir, port, workdir: [str(bin_dir / "bentoml"), "serve", "service.service:FashionClassifier",
                                             "--host", "127.0.0.1", "--port", str(port)],
             "/readyz", our_routes(png, pixels), env={"TF_CPP_MIN_LOG_LEVEL": "3"}, v2_model="onnx-torch"),
        *bare_peers(png, pixels),
        Peer("BentoML", "defaults (1 worker), @bentoml.api(batchable=True): adaptive batching",
             lambda bin_dir, port, workdir: [str(bin_dir / "bentoml"), "serve",
                                             "benchmark.peer_servers.bentoml_peer:Classifier",
                                             "--host", "127.0.0.1", "--port", str(port)],
             "/readyz", (Route("JSON", "/classify", json.dumps({"pixels": [image]}).encode(), JSON),),
             (PINS["bentoml"],)),
        Peer("LitServe", f"accelerator=cpu, 1 worker, max_batch_size={MAX_BATCH_SIZE}, batch_timeout=5 ms",
             peer_module("litserve_peer"), "/health", (Route("JSON", "/predict", listed, JSON),), (PINS["litserve"],)),
        Peer("Ray Serve", f"ray.init(num_cpus=2), 1 replica, max_ongoing_requests={MAX_BATCH_SIZE}, "
             f"@serve.batch({MAX_BATCH_SIZE}, 5 ms)",
             peer_module("ray_peer"), "/", (Route("JSON", "/", listed, JSON),), (PINS["ray"],)),
        Peer("MLServer", f"custom MLModel (no ONNX runtime on PyPI), adaptive batching {MAX_BATCH_SIZE} / 5 ms, "
             "1 parallel worker (default)",
             lambda bin_dir, port, workdir: [str(bin_dir / "mlserver"), "start",
                                             str(write_mlserver_settings(workdir / f"mlserver-{port}", port))],
             f"/v2/models/{MODEL_NAME}/ready", (Route("v2 JSON", f"/v2/models/{MODEL_NAME}/infer", v2_json(pixels),
                                                      JSON),),
             # uvloop 0.22 made asyncio.get_event_loop() raise without a loop; MLServer 1.7.1's workers call it.
             (PINS["mlserver"], "uvloop<0.22"), v2_model=MODEL_NAME),
        Peer("KServe", "ModelServer, 1 worker, gRPC off (no batcher in the Python server)",
             peer_module("kserve_peer"), f"/v2/models/{MODEL_NAME}/ready",
             (Route("v1 JSON", f"/v1/models/{MODEL_NAME}:predict", json.dumps({"instances": [image]}).encode(), JSON),
              Route("v2 JSON", f"/v2/models/{MODEL_NAME}/infer", v2_json(pixels), JSON)),
             (PINS["kserve"],), v2_model=MODEL_NAME),
    ]


def same_runtime() -> tuple[str, ...]:
    """onnxruntime and numpy pinned to this venv's versions, so every peer runs the model alike.

    The CPU wheel of onnxruntime: on a machine without a GPU it runs as ours (``onnxruntime-gpu``) does.
    """
    import onnxruntime

    return f"onnxruntime=={onnxruntime.__version__}", f"numpy=={np.__version__}"


def ensure_venv(path: Path, packages: tuple[str, ...]) -> Path:
    """The venv at ``path`` with ``packages`` installed from the package index; created once, then reused.

    A ``.installed`` file lists what a finished install installed: an interrupted install, or a
    changed list, installs again (pip skips what is there already).
    """
    stamp = path / ".installed"
    wanted = "\n".join(packages) + "\n"
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing {' '.join(packages)} into {path} (once; this can take minutes)", flush=True)
        if not (path / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", *packages], check=True)
        stamp.write_text(wanted)
    return path


def installed_versions(bin_dir: Path, names: tuple[str, ...]) -> str:
    """``name version`` of each module in the venv of ``bin_dir`` (its ``__version__``, else its distribution's)."""
    code = ("import importlib.metadata as m, sys\n"
            "def v(n): return getattr(__import__(n), '__version__', None) or m.version(n)\n"
            "print(', '.join(f'{n} {v(n)}' for n in sys.argv[1:]))")
    out = subprocess.run([str(bin_dir / "python"), "-c", code, *names], capture_output=True, text=True, check=False)
    return out.stdout.strip() or out.stderr.strip()[-200:]


def venv_size_mb(path: Path) -> float:
    """Disk use of a venv in MB (``du``, which counts hard links once)."""
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=False).stdout
    return float(out.split()[0]) if out else float("nan")


def start_peer(peer: Peer, bin_dir: Path, model: Path, workdir: Path) -> Server:
    """Start ``peer`` on a free loopback port and wait until its ready path answers 200."""
    port = free_port()
    log = workdir / f"{peer.name.replace(' ', '-')}-{port}.log"
    # The repository on PYTHONPATH: the peer files and fashion.contract; nothing else of ours is imported.
    env = {**peer.env, MODEL_ENV: str(model), PORT_ENV: str(port), "PYTHONPATH": str(REPO),
           "BENTOML_HOME": str(private_home(workdir))}
    server = start_process(peer.command(bin_dir, port, workdir), f"http://127.0.0.1:{port}", log, env)
    try:
        server.wait_ready(START_TIMEOUT_S, path=peer.ready_path)
    except BaseException:
        stop_peer(server)
        raise
    return server


def stop_peer(server: Server) -> None:
    """Stop the server, then whatever it started in its process group (Ray's and MLServer's workers)."""
    server.stop()
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(server.proc.pid, signal.SIGKILL)


def drive(peer: Peer, url: str, bodies: dict[str, Path], seconds: float, rep: int) -> list[dict]:
    """Warm up every route, then wrk at every level; levels and routes reverse on odd repetitions."""
    for route in peer.routes:  # warm-up, and a check that the route answers
        run_wrk(f"{url}{route.path}", 16, 1, bodies[route.label], content_type=route.content_type,
                header=route.header)
    rows = []
    for level in LEVELS if rep % 2 == 0 else LEVELS[::-1]:
        for route in peer.routes if rep % 2 == 0 else peer.routes[::-1]:
            stats = run_wrk(f"{url}{route.path}", level, seconds, bodies[route.label],
                            content_type=route.content_type, header=route.header)
            rows.append({"peer": peer.name, "route": route.label, "connections": level, "rep": rep,
                         "rps": stats["rps"], "p50_ms": stats["p50_us"] / 1e3, "p99_ms": stats["p99_us"] / 1e3,
                         "statuses": stats["statuses"], "socket_errors": stats["socket_errors"],
                         "wrk_cpu_cores": stats["wrk_cpu_cores"]})
            print(f"{peer.name} / {route.label} c={level} rep {rep}: {stats['rps']:,.0f} req/s, "
                  f"p99 {stats['p99_us'] / 1e3:.1f} ms, statuses {stats['statuses']}", flush=True)
    return rows


def perf_analyzer_binary(cache: Path) -> tuple[Path, dict[str, str]]:
    """perf_analyzer from the ``tritonclient`` wheel and the environment it runs in.

    Raises:
        RuntimeError: saying what is missing and how to get it.
    """
    venv = ensure_venv(cache / "perf_analyzer-2.51.0", PERF_ANALYZER)
    binary = venv / "bin" / "perf_analyzer"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: {PERF_ANALYZER[0]} did not install perf_analyzer "
                           "(the wheel ships it for Linux x86-64 only)")
    # libcudart.so.12 comes from the nvidia-cuda-runtime-cu12 wheel; perf_analyzer links it even without a GPU.
    cudart = sorted(venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    env = {"LD_LIBRARY_PATH": ":".join([*map(str, cudart), os.environ.get("LD_LIBRARY_PATH", "")])}
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env={**os.environ, **env}, check=False)
    missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
    if missing:
        hint = " (apt-get install libb64-0d)" if any("b64" in m for m in missing) else ""
        raise RuntimeError(f"perf_analyzer cannot load {', '.join(missing)}{hint}")
    return binary, env


def perf_analyzer(url: str, model: str, seconds: float, cache: Path, workdir: Path) -> dict:
    """perf_analyzer at every level against a v2 server: ``{"rows": [...]}`` or ``{"error": why}``.

    It reads the model's Triton configuration (``GET /v2/models/<m>/config``) and sends random
    ``UINT8`` images in binary form; latencies are its client-side percentiles.
    """
    import httpx

    config = httpx.get(f"{url}/v2/models/{model}/config", timeout=10)
    if config.status_code != 200:  # otherwise perf_analyzer says only "failed to get model config"
        return {"error": f"the server has no Triton model configuration: GET /v2/models/{model}/config answered "
                         f"{config.status_code}, and perf_analyzer reads the batch limit and tensors from it"}
    try:
        binary, env = perf_analyzer_binary(cache)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        return {"error": str(exc)}
    rows = []
    for level in LEVELS:
        out = workdir / f"perf-{model}-{level}.csv"
        command = [str(binary), "-m", model, "-u", url.removeprefix("http://"), "-i", "http", "-b", "1",
                   "--concurrency-range", f"{level}:{level}", "-p", str(round(seconds * 1000)),
                   "--max-trials", "10", "-s", str(PERF_STABILITY_PERCENT), "-f", str(out)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env},
                                    timeout=seconds * 12 + 60, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"perf_analyzer did not finish within {seconds * 12 + 60:.0f} s", "rows": rows}
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0 or not out.exists():
            last = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()][-3:]
            return {"error": f"perf_analyzer exited with {result.returncode}: {' / '.join(last)}", "rows": rows}
        [row] = list(csv.DictReader(out.open()))
        rows.append({"connections": level, "infer_per_s": float(row["Inferences/Second"]),
                     "p50_ms": float(row["p50 latency"]) / 1e3, "p99_ms": float(row["p99 latency"]) / 1e3,
                     "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime})
        print(f"perf_analyzer {model} c={level}: {rows[-1]['infer_per_s']:,.0f} infer/s, "
              f"p99 {rows[-1]['p99_ms']:.1f} ms", flush=True)
    return {"rows": rows}


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


def render_table(table: list[dict], cores: int) -> list[str]:
    """The wrk table: one line per server and route, medians at each level, wrk's CPU share."""
    lines = ["| server | route | " + " | ".join(f"c={c} req/s, p50, p99" for c in LEVELS)
             + f" | wrk CPU (share of {cores} cores) |",
             "| --- | --- | " + " | ".join("---" for _ in LEVELS) + " | --- |"]
    for peer, route in dict.fromkeys((r["peer"], r["route"]) for r in table):
        cells, cpu = [], []
        for level in LEVELS:
            match = [r for r in table if (r["peer"], r["route"], r["connections"]) == (peer, route, level)]
            if match:
                r = match[0]
                cells.append(f"{r['rps']:,.0f}, {r['p50_ms']:.1f} ms, {r['p99_ms']:.1f} ms"
                             + (f" ({r['non_200']} non-200)" if r["non_200"] else ""))
                cpu.append(r["wrk_cpu_cores"] / cores)
            else:
                cells.append("-")
        lines.append(f"| {peer} | {route} | " + " | ".join(cells) + f" | {statistics.median(cpu):.0%} |")
    return lines


def compare(table: list[dict]) -> list[dict]:
    """Each :data:`SAME_WORK` pair that ran, per level: ours over the bare app (req/s) and ours less it (p99 ms)."""
    cells = {(r["peer"], r["route"], r["connections"]): r for r in table}
    out = []
    for ours, bare in SAME_WORK:
        for level in LEVELS:
            a, b = cells.get((*ours, level)), cells.get((*bare, level))
            if a and b:
                out.append({"ours": ", ".join(ours), "bare": ", ".join(bare), "connections": level,
                            "ratio": a["rps"] / b["rps"], "p99_delta_ms": a["p99_ms"] - b["p99_ms"]})
    return out


def render_comparison(table: list[dict]) -> list[str]:
    """The same-work table: one line per pair, ours as a multiple of the bare app and the p99 difference."""
    pairs = compare(table)
    if not pairs:
        return []
    lines = ["## Same work, side by side", "",
             "Our route's req/s as a multiple of the bare app reading the same payload, and our p99 less its p99.", "",
             "| ours | against | " + " | ".join(f"c={c}" for c in LEVELS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in LEVELS) + " |"]
    for ours, bare in dict.fromkeys((p["ours"], p["bare"]) for p in pairs):
        found = {p["connections"]: p for p in pairs if (p["ours"], p["bare"]) == (ours, bare)}
        lines.append(f"| {ours} | {bare} | " + " | ".join(
            f"{found[c]['ratio']:.2f}x, p99 {found[c]['p99_delta_ms']:+.1f} ms" if c in found else "-"
            for c in LEVELS) + " |")
    return [*lines, ""]


def render(report: dict) -> str:
    """The Markdown report: conditions, the wrk table, perf_analyzer, the peers, what failed."""
    lines = [f"# Peer servers, {report['machine']}", "",
             f"Written by `python -m benchmark.peers {shlex.join(report['argv'])}` at {report['when']}; "
             f"{report['seconds']} s per run, {report['reps']} repetition(s), medians, one image per request, "
             f"one server at a time, in alternating order. {report['note']}", "",
             *render_table(report["medians"], report["cores"]), "",
             *render_comparison(report["medians"])]
    if report["perf_analyzer"]:
        lines += ["## perf_analyzer (tritonclient 2.51) against the v2 servers", "",
                  "| server | " + " | ".join(f"c={c} infer/s, p50, p99" for c in LEVELS) + " |",
                  "| --- | " + " | ".join("---" for _ in LEVELS) + " |"]
    for name, result in report["perf_analyzer"].items():
        cells = {r["connections"]: f"{r['infer_per_s']:,.0f}, {r['p50_ms']:.1f} ms, {r['p99_ms']:.1f} ms"
                 for r in result.get("rows", [])}
        lines.append(f"| {name} | " + " | ".join(cells.get(c, "-") for c in LEVELS) + " |")
    lines += [""] + [f"- perf_analyzer against {name}: {result['error']}"
                     for name, result in report["perf_analyzer"].items() if "error" in result]
    lines += ["", "## Servers", "", "| server | versions | configuration | venv (MB) |", "| --- | --- | --- | --- |"]
    lines += [f"| {p['name']} | {p['version']} | {p['configuration']} | {p['venv_mb']:,.0f} |"
              for p in report["peers"]]
    if report["failures"]:
        lines += ["", "## Did not run", ""] + [f"- {name}: {why}" for name, why in report["failures"].items()]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Requests per second and p99 by connections, one line per server and route."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    table = report["medians"]
    for peer, route in dict.fromkeys((r["peer"], r["route"]) for r in table):
        points = sorted((r["connections"], r["rps"], r["p99_ms"]) for r in table
                        if (r["peer"], r["route"]) == (peer, route))
        for ax, index in zip(axes, (1, 2), strict=True):
            ax.plot([p[0] for p in points], [p[index] for p in points], marker="o", label=f"{peer}: {route}")
    for ax, label in zip(axes, ("requests/s (median)", "p99 latency, ms (median)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(LEVELS, [str(c) for c in LEVELS])
        ax.set_xlabel("wrk connections")
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Peer servers, {report['machine']}, one image per request")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe(peer: Peer, venv: Path) -> dict:
    """Name, installed versions, configuration and venv size of one server."""
    # The framework (the first package), else what this venv serves with.
    names = tuple(p.split("==")[0].split("[")[0] for p in peer.packages[:1]) or ("bentoml", "uvicorn", "starlette")
    return {"name": peer.name, "version": installed_versions(venv / "bin", (*names, "onnxruntime")),
            "configuration": peer.configuration, "venv": str(venv), "venv_mb": venv_size_mb(venv)}


def write_bodies(peer: Peer, workdir: Path) -> dict[str, Path]:
    """Each route's request body in a file for wrk."""
    bodies = {}
    for route in peer.routes:
        bodies[route.label] = workdir / f"{peer.name}-{route.label}.body".replace(" ", "-")
        bodies[route.label].write_bytes(route.body)
    return bodies


def run_all(chosen: list[Peer], args: argparse.Namespace, workdir: Path) -> dict:
    """Install what is missing, then every repetition over every server; rows, perf_analyzer, failures."""
    model = bentoml_onnx_path()
    venvs, described, failures = {}, [], {}
    for peer in chosen:
        try:
            venvs[peer.name] = ensure_venv(peer.venv(args.cache), (*peer.packages, *same_runtime())) \
                if peer.packages else peer.venv(args.cache)
            described.append(describe(peer, venvs[peer.name]))
        except subprocess.CalledProcessError as exc:
            failures[peer.name] = f"install failed: {exc}"
    rows, perf = [], {}
    for rep in range(args.reps):
        for peer in chosen if rep % 2 == 0 else chosen[::-1]:
            if peer.name in failures:
                continue
            try:
                server = start_peer(peer, venvs[peer.name] / "bin", model, workdir)
            except (RuntimeError, TimeoutError) as exc:
                failures[peer.name] = f"did not start: {exc}"
                continue
            try:
                rows += drive(peer, server.url, write_bodies(peer, workdir), args.seconds, rep)
                if rep == 0 and peer.v2_model and not args.no_perf_analyzer:
                    perf[peer.name] = perf_analyzer(server.url, peer.v2_model, args.seconds, args.cache, workdir)
            except subprocess.CalledProcessError as exc:
                failures[peer.name] = f"wrk failed: {exc.stderr[-300:]}"
            finally:
                stop_peer(server)
    return {"peers": described, "runs": rows, "medians": medians(rows), "perf_analyzer": perf, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per wrk run (default: 15)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, medians reported (default: 3)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these servers (default: all)")
    parser.add_argument("--no-perf-analyzer", action="store_true", help="skip perf_analyzer")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"the peers' venvs (default: {CACHE})")
    parser.add_argument("--note", default="", help="a line for the report, e.g. that the machine was busy")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for <stem>-<machine>.{md,json,png}")
    parser.add_argument("--stem", default="peers",
                        help="first part of the file names (default: peers); e.g. peers-ours with --only "
                             "fashion-serve, so the full report is not overwritten")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    png, pixels = one_image()
    chosen = [p for p in peers(png, pixels) if not args.only or p.name in args.only]
    stamp = environment_stamp()
    machine = machine_name(stamp, None)
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        results = run_all(chosen, args, Path(tmp))
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine, "environment": stamp,
              "cores": os.cpu_count(), "argv": list(argv if argv is not None else sys.argv[1:]),
              "seconds": args.seconds, "reps": args.reps, "note": args.note, **results,
              "same_work": compare(results["medians"])}
    stem = write_results(f"{args.stem}-{machine}", render(report), report, args.out).with_suffix("")
    plot(report, stem.with_suffix(".png"))
    print(f"wrote {stem}.md, .json and .png")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
