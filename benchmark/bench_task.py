"""Online latency while a dataset task runs: ``python -m benchmark.bench_task --url http://localhost:3000``.

For each backend: one client sends one test image at a time to ``/classify_array`` for a few
seconds (latency alone), then again while a task classifies the 60,000 training images with that
backend (latency during the task). Prints the p50/p99/max of each and the task's images/s, from
submit to ``completed`` (upload and parsing included). Run the server with
``FASHION_TASK_CHUNK_IMAGES=...`` to compare chunk sizes.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

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


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    return (f"p50 {1000 * statistics.median(ordered):.1f} / p99 {1000 * ordered[int(0.99 * len(ordered))]:.1f} / "
            f"max {1000 * ordered[-1]:.0f} ms ({len(ordered)} requests)")


def measure(url: str, body: bytes, pixels: list, backend: str, alone_seconds: float) -> str:
    """One line: online latency alone, then during a task over ``body`` on ``backend``, and the task's speed."""
    end = time.monotonic() + alone_seconds
    alone = online_latencies(url, pixels, lambda: time.monotonic() > end)
    with ThreadPoolExecutor(1) as pool:
        task = pool.submit(run_task, url, body, backend)
        during = online_latencies(url, pixels, task.done)
        outcome = task.result()
    rate = outcome["total"] / outcome["seconds"]
    return (f"{backend}: alone {summary(alone)}; during the task {summary(during)}; task {outcome['status']}, "
            f"{outcome['total']:,} images in {outcome['seconds']:.2f} s, {rate:,.0f} images/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench_task", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default="http://localhost:3000", help="the running service")
    parser.add_argument("--backends", nargs="+", default=["onnx-torch", "savedmodel", "torch"],
                        help="backends the task runs on")
    parser.add_argument("--alone-seconds", type=float, default=3.0, help="how long latency is measured alone")
    parser.add_argument("--out", type=Path, default=Path("results/task-bench.md"), help="the lines, as Markdown")
    args = parser.parse_args(argv)

    data = load_fashion_mnist()
    buffer = io.BytesIO()
    np.save(buffer, data.train_images)
    lines = []
    for backend in args.backends:
        lines.append(measure(args.url, buffer.getvalue(), data.test_images[:1].tolist(), backend, args.alone_seconds))
        print(lines[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# A dataset task over the training images, online latency alongside ({args.url})\n\n"
                        + "".join(f"- {line}\n" for line in lines))
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
