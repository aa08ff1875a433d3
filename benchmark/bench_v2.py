"""What the v2 protocol costs beside the native endpoints: ``python -m benchmark.bench_v2 --url URL``.

Sends the same test images, one request at a time over one kept-alive connection,
as a native ``.npy`` body and JSON list (``/classify_array``) and as a v2 request
with binary and with JSON tensors (raw HTTP), and through tritonclient (binary).
The formats take turns request by request; prints the median milliseconds per
request and images/s of each, after a warm-up.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench_v2", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", required=True, help="a running service, e.g. http://127.0.0.1:3000")
    parser.add_argument("--backend", default="onnx-torch")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256], help="images per request")
    parser.add_argument("--repeats", type=int, default=200, help="measured requests per format")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests before each format")
    parser.add_argument("--out", type=Path, default=Path("results/v2-bench.md"), help="the table, as Markdown")
    args = parser.parse_args(argv)

    test_images = load_fashion_mnist().test_images
    rows = ["| images/request | format | ms/request (median) | images/s |", "| --- | --- | --- | --- |"]
    print(f"{'images/request':>14}  {'format':<12} {'ms/request':>10} {'images/s':>10}")
    with httpx.Client(base_url=args.url, timeout=60) as client:
        for size in args.batch_sizes:
            pixels = np.ascontiguousarray(test_images[:size])
            senders = {**native_senders(client, pixels, args.backend), **v2_senders(client, pixels, args.backend),
                       "tritonclient": triton_sender(args.url, pixels, args.backend)}
            for name, ms in median_ms(senders, args.repeats, args.warmup).items():
                print(f"{size:>14}  {name:<12} {ms:>10.2f} {size / ms * 1000:>10,.0f}")
                rows.append(f"| {size} | {name} | {ms:.2f} | {size / ms * 1000:,.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# /v2 and native request formats ({args.backend}, {args.repeats} requests each, "
                        f"{args.url})\n\n" + "\n".join(rows) + "\n")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
