"""The two ceilings every GPU row is held against, measured in the same run.

* The card's matmul rate at each precision (fp32 with TF32 off, TF32, fp16, bf16): square
  products through torch, i.e. cuBLAS, on random data (zeros run faster than real data).
* The host-to-device copy rate for uint8 images (784 bytes each), from pinned and from ordinary
  (pageable) host memory. An end-to-end run cannot beat the pinned rate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
IMAGE_BYTES = 28 * 28


def torch_dtype(precision: str):
    """The tensor dtype of a precision name (TF32 computes on float32 tensors)."""
    import torch

    return {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@contextmanager
def matmul_precision(precision: str):
    """TF32 on for ``tf32`` only; restores torch's setting afterwards."""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def synchronize(device: str) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_device(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn``: CUDA events around each call on a GPU, the wall clock on the CPU."""
    import torch

    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return samples


def matmul_rates(device: str, n: int, repeats: int) -> dict[str, float]:
    """FLOP/s of an ``n x n`` by ``n x n`` product at each precision (median of ``repeats``)."""
    import torch

    rates = {}
    generator = torch.Generator(device=device).manual_seed(0)
    for precision in PRECISIONS:
        a, b = (torch.randn(n, n, device=device, generator=generator).to(torch_dtype(precision)) for _ in range(2))
        with matmul_precision(precision):
            samples = time_device(lambda a=a, b=b: a @ b, device, warmup=3, repeats=repeats)
        rates[precision] = 2 * n**3 / statistics.median(samples)
        print(f"  matmul {precision}: {rates[precision] / 1e12:8.2f} TFLOP/s", flush=True)
    return rates


def copy_rates(device: str, nbytes: int, repeats: int) -> dict[str, Any]:
    """Bytes/s of one host-to-device copy of ``nbytes`` of uint8, from pinned and pageable memory.

    On the CPU (a dry run) the stand-in is a memory-to-memory copy; pinning does not apply there.
    """
    import torch

    source = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    rates = {}
    kinds = {"pageable": source}
    if device == "cuda":
        kinds["pinned"] = source.pin_memory()
    for kind, host in kinds.items():
        samples = time_device(lambda h=host: target.copy_(h, non_blocking=True), device, warmup=2, repeats=repeats)
        rates[kind] = nbytes / statistics.median(samples)
        print(f"  host-to-device copy ({kind}): {rates[kind] / 1e9:7.2f} GB/s", flush=True)
    best = max(rates.values())
    return {"bytes": nbytes, "rates": rates, "best_bytes_per_s": best, "images_per_s": best / IMAGE_BYTES}


def measure_ceilings(device: str, matmul_n: int, copy_bytes: int, repeats: int) -> dict[str, Any]:
    """Both ceilings, JSON-ready."""
    import torch

    return {"device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "matmul_n": matmul_n, "matmul_flops": matmul_rates(device, matmul_n, repeats),
            "copy": copy_rates(device, copy_bytes, repeats)}
