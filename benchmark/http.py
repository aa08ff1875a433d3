"""Over-HTTP part: the real service per backend, the bare Starlette ceiling, payload formats (the native
routes and the v2 protocol), a dataset task with online latency beside it, and an open loop."""

from __future__ import annotations

import json
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmark.harness import Server, free_port, multipart_body, percentile, run_wrk, served, start_process
from benchmark.openloop import open_loop
from clients.client import npy_bytes
from fashion.imaging import encode_png

BATCH_METRIC = re.compile(r"^fashion_batch_size_(sum|count)(?:\{[^}]*\})? (\S+)", re.M)


@dataclass(frozen=True)
class HttpPlan:
    """What to measure over HTTP."""

    backends: tuple[str, ...]
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    seconds: float = 5.0
    warmup: float = 1.0
    batch_images: int = 256
    open_loop_seconds: float = 10.0
    task_images: int = 60_000


def bentoml_onnx_path() -> Path:
    """The PyTorch export's ONNX file in the BentoML store (what the default backend serves)."""
    import bentoml

    from fashion.backends import MODEL_NAMES

    return Path(bentoml.models.get(f"{MODEL_NAMES['torch']}:latest").path) / "model.onnx"


def start_bare(workdir: Path) -> Server:
    """The bare Starlette app (benchmark.bare_app: same decode, same ONNX model, same JSON); not yet ready."""
    port = free_port()
    return start_process([sys.executable, "-m", "uvicorn", "benchmark.bare_app:app", "--port", str(port),
                          "--workers", "1", "--no-access-log", "--log-level", "warning"],
                         f"http://127.0.0.1:{port}", workdir / "bare.log",
                         {"FASHION_ONNX_MODEL": str(bentoml_onnx_path())})


def batch_size_counters(url: str) -> tuple[float, float]:
    """(sum, count) of the batcher's batch-size histogram (images per model call)."""
    found = dict.fromkeys(("sum", "count"), 0.0)
    for kind, value in BATCH_METRIC.findall(httpx.get(f"{url}/metrics", timeout=10).text):
        found[kind] += float(value)
    return found["sum"], found["count"]


def _bodies(images: np.ndarray, work: Path) -> dict[str, tuple[Path, str, str]]:
    """Request bodies (file, content type, extra header): one PNG upload; a batch as PNG uploads, .npy, JSON,
    and as v2 requests with a binary tensor and with a JSON tensor."""
    boundary = uuid.uuid4().hex
    multipart = f"multipart/form-data; boundary={boundary}"
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8"}
    v2_header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": images.size}}],
                            "parameters": {"binary_data_output": True}}).encode()
    contents = {
        "single-png": (multipart_body(encode_png(images[0]), boundary), multipart, ""),
        "batch-png": (b"".join(multipart_body(encode_png(img), boundary).removesuffix(f"--{boundary}--\r\n".encode())
                               for img in images) + f"--{boundary}--\r\n".encode(), multipart, ""),
        "batch-npy": (npy_bytes(images), "application/x-npy", ""),
        "batch-json": (json.dumps({"pixels": images.tolist()}).encode(), "application/json", ""),
        "v2-binary": (v2_header + np.ascontiguousarray(images).tobytes(), "application/octet-stream",
                      f"Inference-Header-Content-Length: {len(v2_header)}"),
        "v2-json": (json.dumps({"inputs": [{**tensor, "data": images.ravel().tolist()}]}).encode(),
                    "application/json", ""),
    }
    bodies = {}
    for name, (content, content_type, header) in contents.items():
        (work / name).write_bytes(content)
        bodies[name] = (work / name, content_type, header)
    return bodies


def _row(kind: str, target: str, stats: dict[str, Any], images_per_request: int, extra: dict | None = None) -> dict:
    row = {"kind": kind, "target": target, "concurrency": stats.get("concurrency"), "rps": stats["rps"],
           "images_per_s": stats["rps"] * images_per_request, "p50_ms": stats["p50_us"] / 1e3,
           "p90_ms": stats["p90_us"] / 1e3, "p99_ms": stats["p99_us"] / 1e3, "statuses": stats["statuses"],
           "socket_errors": stats["socket_errors"], "wrk_cpu_cores": stats["wrk_cpu_cores"], **(extra or {})}
    print(f"  {kind:<14} {target:<22} c={row['concurrency']!s:<3} {row['rps']:>8.0f} req/s "
          f"{row['images_per_s']:>9.0f} img/s  p50 {row['p50_ms']:7.2f}  p99 {row['p99_ms']:8.2f} ms  "
          f"{row['statuses']}  wrk {row['wrk_cpu_cores']:.2f} cores", flush=True)
    return row


def run_task(url: str, images: np.ndarray, backend: str) -> dict[str, Any]:
    """A dataset task over ``images`` (.npy) on ``backend``, with one client sending one image at a time to
    ``/classify_array`` until it ends: the task's images/s from submit to its end, and the client's latency."""
    done = threading.Event()
    latencies: list[float] = []

    def online() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set():
                began = time.perf_counter()
                client.post("/classify_array", json={"pixels": images[:1].tolist()}).raise_for_status()
                latencies.append(time.perf_counter() - began)

    client_thread = threading.Thread(target=online, name="online-client")
    client_thread.start()
    began = time.perf_counter()
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            task_id = client.post("/classify_dataset/submit", content=npy_bytes(images),
                                  params={"backend": backend}).raise_for_status().json()["task_id"]
            while (view := client.get("/classify_dataset/progress", params={"task_id": task_id}).json()
                   )["status"] == "in_progress":
                done.wait(0.05)
    finally:
        done.set()
        client_thread.join()
    seconds = time.perf_counter() - began
    row = {"kind": "task", "target": backend, "images": len(images), "status": view["status"],
           "images_per_s": len(images) / seconds, "online_p50_ms": 1e3 * percentile(latencies, 50),
           "online_p99_ms": 1e3 * percentile(latencies, 99), "online_requests": len(latencies)}
    print(f"  task           {backend:<22} {row['images_per_s']:>9.0f} img/s, one client beside it: p50 "
          f"{row['online_p50_ms']:.2f} ms, p99 {row['online_p99_ms']:.2f} ms ({view['status']})", flush=True)
    return row


def measure_service(service: str, bare: str, images: np.ndarray, bodies: dict, plan: HttpPlan) -> dict[str, Any]:
    """Every row against a ready service and bare app; JSON-ready."""
    rows: list[dict[str, Any]] = []

    def measure(kind, target, url, body, concurrency, images_per_request=1, batches=False):
        path, content_type, header = bodies[body]
        run_wrk(url, concurrency, plan.warmup, path, content_type=content_type, header=header)
        before = batch_size_counters(service) if batches else None
        stats = run_wrk(url, concurrency, plan.seconds, path, content_type=content_type, header=header)
        extra = {}
        if before:
            total, count = (a - b for a, b in zip(batch_size_counters(service), before, strict=True))
            extra = {"mean_batch_size": total / count if count else None}
        rows.append(_row(kind, target, {**stats, "concurrency": concurrency}, images_per_request, extra))

    print("bare Starlette ceiling (same decode, same ONNX model, same JSON)", flush=True)
    for concurrency in plan.concurrency:
        measure("single", "bare-starlette", f"{bare}/classify", "single-png", concurrency)
    print("service, one image per request (its batcher merges concurrent ones)", flush=True)
    for backend in plan.backends:
        for concurrency in plan.concurrency:
            measure("single", backend, f"{service}/classify?backend={backend}", "single-png", concurrency,
                    batches=True)
    print(f"service, {plan.batch_images} images per request (.npy to /classify_array), 4 clients", flush=True)
    for backend in plan.backends:
        measure("batch", backend, f"{service}/classify_array?backend={backend}", "batch-npy", 4, plan.batch_images)
    first = plan.backends[0]
    print(f"payload formats, {plan.batch_images} images per request, {first}, 4 clients", flush=True)
    native, v2 = f"classify_array?backend={first}", f"v2/models/{first}/infer"
    for body, route in (("batch-png", f"classify_batch?backend={first}"), ("batch-npy", native),
                        ("batch-json", native), ("v2-binary", v2), ("v2-json", v2)):
        measure("format", body.removeprefix("batch-"), f"{service}/{route}", body, 4, plan.batch_images)
    print(f"a dataset task of {plan.task_images:,} images", flush=True)
    task = run_task(service, np.resize(images, (plan.task_images, *images.shape[1:])), first)
    rate = round(0.6 * max(r["rps"] for r in rows if r["kind"] == "single" and r["target"] == first))
    print(f"open loop: {rate} requests/s (60% of the best closed-loop rate) for {plan.open_loop_seconds}s",
          flush=True)
    path, content_type, _ = bodies["single-png"]
    loop = open_loop(f"{service}/classify?backend={first}", path.read_bytes(), content_type, rate,
                     plan.open_loop_seconds)
    print(f"  p50 {loop['p50_s'] * 1e3:.2f} ms, p99 {loop['p99_s'] * 1e3:.2f} ms, {loop['statuses']}, "
          f"generator {loop['generator_cpu_cores']:.2f} cores", flush=True)
    return {"rows": rows, "task": task, "open_loop": {**loop, "backend": first}, "batch_images": plan.batch_images}


def run_http(images: np.ndarray, plan: HttpPlan) -> dict[str, Any]:
    """Start the service and the bare app, measure, stop them; JSON-ready results."""
    work = Path(tempfile.mkdtemp(prefix="fashion-benchmark-"))
    bodies = _bodies(images[: plan.batch_images], work)
    env = {"FASHION_BACKENDS": ",".join(plan.backends), "FASHION_MAX_TASK_IMAGES": str(plan.task_images)}
    with served(work, env) as service:
        bare = start_bare(work)
        try:
            bare.wait_ready(path="/livez")
            return measure_service(service.url, bare.url, images, bodies, plan)
        finally:
            bare.stop()
