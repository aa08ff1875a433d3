"""What the v2 protocol costs beside the native endpoints: ``python -m benchmark.bench_v2`` -> results/v2-bench.md.

Sends the same test images, one request at a time over one kept-alive connection,
as a native ``.npy`` body and JSON list (``/classify_array``) and as a v2 request
with binary and with JSON tensors (raw HTTP), and through tritonclient (binary).
The formats take turns request by request. Each run gives the median milliseconds
per request of each format, after a warm-up; the report gives the middle of the
runs with their range, and the ratios between formats within each run. Without
``--url`` it starts the service itself (``service.launch``).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from benchmark.served import served
from fashion.data import load_fashion_mnist

Send = Callable[[], None]


def native_senders(client: httpx.Client, pixels: np.ndarray, backend: str) -> dict[str, Send]:
    """The native endpoint with a ``.npy`` body and with a JSON list."""
    buffer = io.BytesIO()
    np.save(buffer, pixels)
    npy, listed = buffer.getvalue(), json.dumps({"pixels": pixels.tolist(), "backend": backend}).encode()

    def send_npy() -> None:
        client.post("/classify_array", params={"backend": backend}, content=npy,
                    headers={"Content-Type": "application/x-npy"}).raise_for_status()

    def send_json() -> None:
        client.post("/classify_array", content=listed, headers={"Content-Type": "application/json"}).raise_for_status()

    return {"native .npy": send_npy, "native JSON": send_json}


def v2_senders(client: httpx.Client, pixels: np.ndarray, backend: str) -> dict[str, Send]:
    """The v2 infer endpoint with binary tensors in and out, and with JSON tensors in and out."""
    tensor = {"name": "images", "shape": list(pixels.shape), "datatype": "UINT8"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": pixels.size}}],
                         "parameters": {"binary_data_output": True}}).encode()
    binary, listed = header + pixels.tobytes(), json.dumps({"inputs": [{**tensor, "data": pixels.ravel().tolist()}]})
    route = f"/v2/models/{backend}/infer"

    def send_binary() -> None:
        client.post(route, content=binary, headers={"Inference-Header-Content-Length": str(len(header))}
                    ).raise_for_status()

    def send_json() -> None:
        client.post(route, content=listed, headers={"Content-Type": "application/json"}).raise_for_status()

    return {"v2 binary": send_binary, "v2 JSON": send_json}


def triton_sender(url: str, pixels: np.ndarray, backend: str) -> Send:
    """tritonclient's synchronous HTTP client with a binary input (its default outputs: binary)."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url.removeprefix("http://").removeprefix("https://"))
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return lambda: client.infer(backend, [tensor])


def median_ms(senders: dict[str, Send], repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per request of each sender, after ``warmup`` unmeasured requests each.

    The formats take turns, one request each, so that load from elsewhere on a shared
    machine falls on all of them alike instead of on whichever ran at the time.
    """
    for send in senders.values():
        for _ in range(warmup):
            send()
    times: dict[str, list[float]] = {name: [] for name in senders}
    for _ in range(repeats):
        for name, send in senders.items():
            start = time.perf_counter()
            send()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(spent) for name, spent in times.items()}


FORMATS = ("native .npy", "native JSON", "v2 binary", "v2 JSON", "tritonclient")


def measure_runs(url: str, images: np.ndarray, sizes: list[int], backend: str, repeats: int, warmup: int,
                 runs: int) -> dict[int, list[dict[str, float]]]:
    """Per batch size, one dict of median milliseconds per format for each run."""
    found: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    with httpx.Client(base_url=url, timeout=60) as client:
        for run in range(runs):
            for size in sizes:
                pixels = np.ascontiguousarray(images[:size])
                senders = {**native_senders(client, pixels, backend), **v2_senders(client, pixels, backend),
                           "tritonclient": triton_sender(url, pixels, backend)}
                found[size].append(median_ms(senders, repeats, warmup))
                print(f"run {run + 1}, {size} images: "
                      + ", ".join(f"{k} {v:.2f} ms" for k, v in found[size][-1].items()), flush=True)
    return found


def ratio_range(runs: list[dict[str, float]], over: str, under: str) -> str:
    """The smallest and largest ``over / under`` across the runs, e.g. ``0.54 to 0.68``."""
    ratios = [run[over] / run[under] for run in runs]
    return f"{min(ratios):.2f} to {max(ratios):.2f}"


def report(found: dict[int, list[dict[str, float]]], command: str, backend: str, repeats: int, warmup: int) -> str:
    """results/v2-bench.md: middle run and range per format and batch size, then the ratios per run."""
    runs = len(next(iter(found.values())))
    lines = [f"# /v2 and native request formats ({backend})", "",
             f"Written by `{command}`. Each figure is the median of {repeats} requests after {warmup} warm-up "
             f"requests per format; the formats take turns request by request. Middle of {runs} runs, range in "
             "brackets, milliseconds per request. The machine may have been shared.", "",
             "| images per request | " + " | ".join(FORMATS) + " |", "| --- |" + " --- |" * len(FORMATS)]
    for size, per_run in found.items():
        cells = []
        for name in FORMATS:
            values = sorted(run[name] for run in per_run)
            cells.append(f"{statistics.median(values):.2f} ms ({values[0]:.2f}–{values[-1]:.2f})")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios within each run (smallest to largest across runs):", ""]
    for size, per_run in found.items():
        lines.append(f"- {size} images: v2 binary / native .npy {ratio_range(per_run, 'v2 binary', 'native .npy')}; "
                     f"v2 JSON / v2 binary {ratio_range(per_run, 'v2 JSON', 'v2 binary')}; "
                     f"native JSON / native .npy {ratio_range(per_run, 'native JSON', 'native .npy')}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench_v2", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default=None, help="a running service (default: start one)")
    parser.add_argument("--backend", default="onnx-torch")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256], help="images per request")
    parser.add_argument("--repeats", type=int, default=200, help="measured requests per format")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests before each format")
    parser.add_argument("--runs", type=int, default=3, help="runs; the report gives the middle one and the range")
    parser.add_argument("--out", type=Path, default=Path("results/v2-bench.md"), help="the report, as Markdown")
    args = parser.parse_args(argv)

    images = load_fashion_mnist().test_images
    with served(args.url) as url:
        found = measure_runs(url, images, args.batch_sizes, args.backend, args.repeats, args.warmup, args.runs)
    command = " ".join(["python -m benchmark.bench_v2", *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(found, command, args.backend, args.repeats, args.warmup))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
