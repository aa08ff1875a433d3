"""Online latency while a dataset task runs: ``python -m benchmark.bench_task`` -> results/task-bench.md.

For each task chunk size (a service started with ``FASHION_TASK_CHUNK_IMAGES``) and each backend:
one client sends one test image at a time to ``/classify_array`` for a few seconds (latency alone),
then again while a task classifies the 60,000 training images with that backend (latency during
the task). Reports the p50/p99 of each and the task's images/s, from submit to ``completed``
(upload and parsing included). ``--url`` measures a running service instead, at its own chunk size.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from benchmark.served import served
from fashion.data import load_fashion_mnist


def online_latencies(url: str, pixels: list, stop: Callable[[], bool]) -> list[float]:
    """Seconds per ``/classify_array`` request of one image, one request at a time, until ``stop()``."""
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop():
            began = time.perf_counter()
            reply = client.post("/classify_array", json={"pixels": pixels})
            latencies.append(time.perf_counter() - began)
            reply.raise_for_status()
    return latencies


def run_task(url: str, body: bytes, backend: str) -> dict:
    """Submit ``body`` as a dataset task and poll its progress until it ends; the last progress answer."""
    reply = httpx.post(f"{url}/classify_dataset/submit", content=body, params={"backend": backend}, timeout=120)
    reply.raise_for_status()
    task_id = reply.json()["task_id"]
    with httpx.Client(base_url=url, timeout=30) as client:
        while (view := client.get("/classify_dataset/progress", params={"task_id": task_id}).json())["status"] \
                == "in_progress":
            time.sleep(0.05)
    return view


def percentiles_ms(latencies: list[float]) -> str:
    """``p50 / p99 ms`` of request latencies in seconds."""
    ordered = sorted(latencies)
    return f"{1000 * statistics.median(ordered):.1f} / {1000 * ordered[int(0.99 * len(ordered))]:.1f} ms"


def measure(url: str, body: bytes, pixels: list, backend: str, alone_seconds: float) -> dict:
    """Online latency alone, then during a task over ``body`` on ``backend``, and the task's outcome."""
    end = time.monotonic() + alone_seconds
    alone = online_latencies(url, pixels, lambda: time.monotonic() > end)
    with ThreadPoolExecutor(1) as pool:
        task = pool.submit(run_task, url, body, backend)
        during = online_latencies(url, pixels, task.done)
        outcome = task.result()
    return {"alone": percentiles_ms(alone), "during": percentiles_ms(during), "status": outcome["status"],
            "images_per_s": outcome["total"] / outcome["seconds"]}


def row(backend: str, chunk: str, found: dict) -> str:
    """One Markdown table row."""
    return (f"| {backend} | {chunk} | {found['alone']} | {found['during']} | {found['status']} "
            f"| {found['images_per_s']:,.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench_task", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default=None, help="a running service (default: start one per chunk size)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 256],
                        help="task chunk sizes, one started service each (ignored with --url)")
    parser.add_argument("--backends", nargs="+", default=["onnx-torch", "savedmodel", "torch"],
                        help="backends the task runs on")
    parser.add_argument("--alone-seconds", type=float, default=3.0, help="how long latency is measured alone")
    parser.add_argument("--out", type=Path, default=Path("results/task-bench.md"), help="the report, as Markdown")
    args = parser.parse_args(argv)

    data = load_fashion_mnist()
    buffer = io.BytesIO()
    np.save(buffer, data.train_images)
    pixels = data.test_images[:1].tolist()
    rows = []
    for chunk in [None] if args.url else args.chunks:
        label = "the server's" if chunk is None else f"{chunk:,}"
        with served(args.url, {"FASHION_TASK_CHUNK_IMAGES": str(chunk)} if chunk else None) as url:
            for backend in args.backends:
                rows.append(row(backend, label, measure(url, buffer.getvalue(), pixels, backend, args.alone_seconds)))
                print(rows[-1], flush=True)
    command = " ".join(["python -m benchmark.bench_task", *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# A dataset task over the {len(data.train_images):,} training images, online latency alongside\n\n"
        f"Written by `{command}`. One client sends one image at a time to `/classify_array`, alone for "
        f"{args.alone_seconds:g} s, then while the task runs; the task's rate runs from submit to `completed`, "
        "upload included. The machine may have been shared.\n\n"
        "| task backend | chunk | online p50 / p99 alone | online p50 / p99 during the task | task | task images/s |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
