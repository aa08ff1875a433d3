"""Over-HTTP part: the real service per backend, the bare Starlette ceiling, payload formats, open loop."""

from __future__ import annotations

import io
import json
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmark.bench_http import multipart_body, run_wrk, start_servers, stop_servers
from benchmark.openloop import open_loop
from fashion.imaging import encode_png

BATCH_METRIC = re.compile(r"^fashion_batch_size_(sum|count)(?:\{[^}]*\})? (\S+)",
                          re.M)


@dataclass(frozen=True)
class HttpPlan:
    """What to measure over HTTP."""

    backends: tuple[str, ...]
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    seconds: float = 5.0
    warmup: float = 1.0
    batch_images: int = 256
    open_loop_seconds: float = 10.0


def batch_size_counters(url: str) -> tuple[float, float]:
    """(sum, count) of the batcher's batch-size histogram (images per model call)."""
    found = dict.fromkeys(("sum", "count"), 0.0)
    for kind, value in BATCH_METRIC.findall(httpx.get(f"{url}/metrics", timeout=10).text):
        found[kind] += float(value)
    return found["sum"], found["count"]


def _bodies(images: np.ndarray, work: Path) -> dict[str, tuple[Path, str]]:
    """Request bodies: one PNG upload, and one batch of images as PNG uploads, .npy and JSON."""
    boundary = uuid.uuid4().hex
    single = work / "single.bin"
    single.write_bytes(multipart_body(encode_png(images[0]), boundary))
    pngs = b"".join(multipart_body(encode_png(img), boundary).removesuffix(f"--{boundary}--\r\n".encode())
                    for img in images) + f"--{boundary}--\r\n".encode()
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    bodies = {
        "single-png": (single, f"multipart/form-data; boundary={boundary}"),
        "batch-png": (work / "batch.bin", f"multipart/form-data; boundary={boundary}"),
        "batch-npy": (work / "batch.npy", "application/x-npy"),
        "batch-json": (work / "batch.json", "application/json"),
    }
    bodies["batch-png"][0].write_bytes(pngs)
    bodies["batch-npy"][0].write_bytes(buffer.getvalue())
    bodies["batch-json"][0].write_text(json.dumps({"pixels": images.tolist()}))
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


def run_http(images: np.ndarray, plan: HttpPlan) -> dict[str, Any]:
    """Start the service and the bare app, measure, stop them; JSON-ready results."""
    work = Path(tempfile.mkdtemp(prefix="fashion-benchmark-"))
    bodies = _bodies(images[: plan.batch_images], work)
    servers = start_servers(work, plan.backends)
    bento, bare = servers["bentoml"][1], servers["bare"][1]
    rows: list[dict[str, Any]] = []
    try:
        def measure(kind, target, url, body, concurrency, images_per_request=1, batches=False):
            path, content_type = bodies[body]
            run_wrk(url, concurrency, plan.warmup, path, content_type=content_type)
            before = batch_size_counters(bento) if batches else None
            stats = run_wrk(url, concurrency, plan.seconds, path, content_type=content_type)
            extra = {}
            if before:
                total, count = (a - b for a, b in zip(batch_size_counters(bento), before, strict=True))
                extra = {"mean_batch_size": total / count if count else None}
            rows.append(_row(kind, target, {**stats, "concurrency": concurrency}, images_per_request, extra))

        print("bare Starlette ceiling (same decode, same ONNX model, same JSON)", flush=True)
        for concurrency in plan.concurrency:
            measure("single", "bare-starlette", f"{bare}/classify", "single-png", concurrency)
        print("service, one image per request (its batcher merges concurrent ones)", flush=True)
        for backend in plan.backends:
            for concurrency in plan.concurrency:
                measure("single", backend, f"{bento}/classify?backend={backend}", "single-png", concurrency,
                        batches=True)
        print(f"service, {plan.batch_images} images per request (.npy to /classify_array), 4 clients", flush=True)
        for backend in plan.backends:
            measure("batch", backend, f"{bento}/classify_array?backend={backend}", "batch-npy", 4,
                    plan.batch_images)
        print(f"payload formats, {plan.batch_images} images per request, onnx-torch, 4 clients", flush=True)
        for body, route in (("batch-png", "classify_batch"), ("batch-npy", "classify_array"),
                            ("batch-json", "classify_array")):
            measure("format", body.removeprefix("batch-"), f"{bento}/{route}?backend=onnx-torch", body, 4,
                    plan.batch_images)
        capacity = max(r["rps"] for r in rows if r["kind"] == "single" and r["target"] == plan.backends[0])
        rate = round(0.6 * capacity)
        print(f"open loop: {rate} requests/s (60% of the best closed-loop rate) for {plan.open_loop_seconds}s",
              flush=True)
        path, content_type = bodies["single-png"]
        loop = open_loop(f"{bento}/classify?backend={plan.backends[0]}", path.read_bytes(), content_type, rate,
                         plan.open_loop_seconds)
        print(f"  p50 {loop['p50_s'] * 1e3:.2f} ms, p99 {loop['p99_s'] * 1e3:.2f} ms, {loop['statuses']}, "
              f"generator {loop['generator_cpu_cores']:.2f} cores", flush=True)
    finally:
        stop_servers(servers)
    return {"rows": rows, "open_loop": {**loop, "backend": plan.backends[0]}, "batch_images": plan.batch_images}



