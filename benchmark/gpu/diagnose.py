"""Where the time goes, so a missed target comes with the timing that explains it.

* Per layer: each of the model's matrix products alone, at the largest batch and every precision,
  against the square-matmul ceiling; their sum against the whole forward pass (the rest is
  bias, ReLU, the uint8 scaling and launches).
* Per pipeline stage: the end-to-end chunks' host-to-device copies alone, the model alone on
  chunks already on the device, and the two overlapped: if the overlapped time is near the larger
  of the two, the pipeline overlaps and that one bounds it.
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import numpy as np

from benchmark.gpu.ceilings import matmul_precision, synchronize, time_device, torch_dtype
from benchmark.gpu.variants import normalise


def layer_profile(model, layer_sizes: list[int], batch: int, precision: str, device: str,
                  repeats: int) -> dict[str, Any]:
    """Seconds of each layer's matmul alone and of the whole forward pass, at ``batch`` images."""
    import torch

    dtype = torch_dtype(precision)
    generator = torch.Generator(device=device).manual_seed(0)
    layers = []
    with torch.inference_mode(), matmul_precision(precision):
        for fan_in, fan_out in itertools.pairwise(layer_sizes):
            x = torch.randn(batch, fan_in, device=device, generator=generator).to(dtype)
            w = torch.randn(fan_in, fan_out, device=device, generator=generator).to(dtype)
            seconds = statistics.median(time_device(lambda x=x, w=w: x @ w, device, warmup=3, repeats=repeats))
            layers.append({"shape": f"{batch}x{fan_in} @ {fan_in}x{fan_out}", "seconds": seconds,
                           "flops_per_s": 2 * batch * fan_in * fan_out / seconds})
        pixels = torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8, device=device, generator=generator)
        forward = statistics.median(time_device(lambda: model(normalise(pixels, dtype)), device, warmup=3,
                                                repeats=repeats))
    matmuls = sum(layer["seconds"] for layer in layers)
    return {"precision": precision, "batch": batch, "layers": layers, "matmul_seconds": matmuls,
            "forward_seconds": forward, "other_share": max(0.0, 1 - matmuls / forward)}


def pipeline_split(model, pixels: np.ndarray, precision: str, chunk: int, device: str) -> dict[str, float]:
    """Seconds for all chunks' copies alone (from pinned memory on a GPU) and for the model alone on them."""
    import torch

    dtype = torch_dtype(precision)
    host = torch.from_numpy(pixels)
    if device == "cuda":
        host = host.pin_memory()
    resident = torch.empty((chunk, 28, 28), dtype=torch.uint8, device=device)
    starts = range(0, len(pixels), chunk)

    def copies():
        for start in starts:
            size = min(chunk, len(pixels) - start)
            resident[:size].copy_(host[start:start + size], non_blocking=True)

    def compute():
        with torch.inference_mode(), matmul_precision(precision):
            for start in starts:
                size = min(chunk, len(pixels) - start)
                torch.softmax(model(normalise(resident[:size], dtype)).float(), dim=1).max(dim=1)

    split = {}
    for name, fn in (("copy_seconds", copies), ("compute_seconds", compute)):
        fn()
        synchronize(device)
        split[name] = statistics.median(time_device(fn, device, warmup=1, repeats=3))
    return split


def run_diagnosis(model_dir, layer_sizes: list[int], pixels: np.ndarray, device: str, batch: int, chunk: int,
                  precisions: tuple[str, ...], repeats: int) -> dict[str, Any]:
    """Both profiles for every precision, JSON-ready."""
    import copy

    from fashion.backends import load_artifact

    predictor = load_artifact(model_dir, "torch", "torch", device=device)
    layers, pipeline = [], []
    for precision in precisions:
        model = copy.deepcopy(predictor.model).to(torch_dtype(precision))
        layers.append(layer_profile(model, layer_sizes, batch, precision, device, repeats))
        pipeline.append({"precision": precision, "images": len(pixels), "chunk": chunk,
                         **pipeline_split(model, pixels, precision, chunk, device)})
        print(f"  {precision}: layers {layers[-1]['matmul_seconds'] * 1e3:.3f} ms of a "
              f"{layers[-1]['forward_seconds'] * 1e3:.3f} ms forward pass at batch {batch:,}; "
              f"{len(pixels):,} images: copies {pipeline[-1]['copy_seconds'] * 1e3:.1f} ms, "
              f"model {pipeline[-1]['compute_seconds'] * 1e3:.1f} ms", flush=True)
    return {"device": device, "ran_on": predictor.describe(), "requested": device, "layers": layers,
            "pipeline": pipeline}
