"""End to end from host memory: uint8 images in a numpy array, class ids and confidences back in host memory.

The pipeline (torch on CUDA): chunks of images go to the GPU on a copy stream while the previous
chunk is normalised, classified and reduced to (class id, confidence) on the compute stream;
answers return to pinned host buffers. Two ways to feed the copy engine:

* ``registered``: the caller's array itself is page-locked (``cudaHostRegister``, its cost
  counted) so each chunk is copied straight from it at the pinned rate;
* ``staged``: each chunk is first copied by the CPU into one of two pinned staging buffers;
* ``pre-pinned``: the array was page-locked before the clock started (a producer that reads
  into pinned memory): what the pipeline itself reaches against the copy ceiling.

The rate is held against the pinned host-to-device copy rate measured in the same run (784 bytes
per image): the ceiling no host-fed pipeline can pass. On the CPU (a dry run) the same chunks run
in order with no copies; the modes do not apply there.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.gpu.ceilings import matmul_precision, torch_dtype
from benchmark.gpu.variants import normalise
from fashion.backends import load_artifact


@dataclass(frozen=True)
class EndToEndPlan:
    """What the end-to-end stage measures."""

    chunk: int
    synthetic: int
    repeats: int
    precisions: tuple[str, ...] = ("fp32", "tf32", "bf16")


@contextmanager
def page_locked(array: np.ndarray):
    """``cudaHostRegister`` an existing array for the duration (torch then sees it as pinned)."""
    import torch

    cudart = torch.cuda.cudart()
    pointer = array.ctypes.data
    status = cudart.cudaHostRegister(pointer, array.nbytes, 0)
    if int(status) != 0:
        raise RuntimeError(f"cudaHostRegister failed: {status}")
    try:
        yield
    finally:
        cudart.cudaHostUnregister(pointer)


def answer(model, x, dtype):
    """Class id (uint8) and its probability (float32) per image, computed on the device."""
    import torch

    probs = torch.softmax(model(normalise(x, dtype)).float(), dim=1)
    confidence, ids = probs.max(dim=1)
    return ids.to(torch.uint8), confidence


def classify_cuda(model, pixels: np.ndarray, precision: str, chunk: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The double-buffered pipeline above; returns (ids, confidences) in host memory."""
    import torch

    dtype, n = torch_dtype(precision), len(pixels)
    copy_stream, compute = torch.cuda.Stream(), torch.cuda.current_stream()
    ids_host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    conf_host = torch.empty(n, dtype=torch.float32, pin_memory=True)
    device_in = [torch.empty((chunk, 28, 28), dtype=torch.uint8, device="cuda") for _ in range(2)]
    staging = [torch.empty((chunk, 28, 28), dtype=torch.uint8, pin_memory=True) for _ in range(2)] \
        if mode == "staged" else None
    copied = [torch.cuda.Event() for _ in range(2)]
    consumed = [torch.cuda.Event() for _ in range(2)]
    source = torch.from_numpy(pixels)
    for k, start in enumerate(range(0, n, chunk)):
        slot, size = k % 2, min(chunk, n - start)
        if staging is not None:
            copied[slot].synchronize()  # the copy engine has finished reading this staging buffer
            staging[slot][:size].copy_(source[start:start + size])
            host = staging[slot][:size]
        else:
            host = source[start:start + size]
        with torch.cuda.stream(copy_stream):
            copy_stream.wait_event(consumed[slot])  # the model has finished with this device buffer
            device_in[slot][:size].copy_(host, non_blocking=True)
            copied[slot].record(copy_stream)
        compute.wait_event(copied[slot])
        with torch.inference_mode(), matmul_precision(precision):
            ids, confidence = answer(model, device_in[slot][:size], dtype)
        ids_host[start:start + size].copy_(ids, non_blocking=True)
        conf_host[start:start + size].copy_(confidence, non_blocking=True)
        consumed[slot].record(compute)
    torch.cuda.synchronize()
    return ids_host.numpy(), conf_host.numpy()


def classify_cpu(model, pixels: np.ndarray, precision: str, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The dry run's stand-in: the same per-chunk work, in order, on the CPU."""
    import torch

    ids, confidences = [], []
    with torch.inference_mode():
        for start in range(0, len(pixels), chunk):
            i, c = answer(model, torch.from_numpy(pixels[start:start + chunk]), torch_dtype(precision))
            ids.append(i.numpy())
            confidences.append(c.numpy())
    return np.concatenate(ids), np.concatenate(confidences)


def run_once(model, pixels: np.ndarray, precision: str, chunk: int, mode: str, device: str):
    """One timed pass: (seconds, ids, confidences); registration, when used, is inside the timing."""
    start = time.perf_counter()
    if device != "cuda":
        ids, conf = classify_cpu(model, pixels, precision, chunk)
    elif mode == "registered":
        with page_locked(pixels):
            ids, conf = classify_cuda(model, pixels, precision, chunk, mode)
    else:  # "staged", or "pre-pinned": the caller registered the array before the clock started
        ids, conf = classify_cuda(model, pixels, precision, chunk, mode)
    return time.perf_counter() - start, ids, conf


def run_endtoend(model_dir: Path, images: np.ndarray, labels: np.ndarray, device: str, plan: EndToEndPlan,
                 copy_ceiling_images_per_s: float | None) -> dict[str, Any]:
    """Every (data set, precision, mode): median rate, fraction of the copy ceiling, answers checked."""
    import copy

    import torch

    predictor = load_artifact(model_dir, "torch", "torch", device=device)
    facts = predictor.describe()
    synthetic = np.ascontiguousarray(np.resize(images, (plan.synthetic, *images.shape[1:])))
    datasets = {"test": np.array(images), f"synthetic {plan.synthetic:,}": synthetic}
    modes = ("pre-pinned", "registered", "staged") if device == "cuda" else ("in-order",)
    rows: list[dict[str, Any]] = []
    reference: dict[str, np.ndarray] = {}  # the first precision's test answers, which the others are held to
    for precision in plan.precisions:
        model = copy.deepcopy(predictor.model).to(torch_dtype(precision))
        for mode in modes:
            try:
                rows += measure_mode(model, datasets, labels, precision, mode, device, plan, facts,
                                     copy_ceiling_images_per_s, reference)
            except Exception as exc:  # say, cudaHostRegister refused: the other modes still run
                rows.append({"data": "all", "precision": precision, "mode": mode, "requested": device,
                             "ran_on": facts, "error": f"{type(exc).__name__}: {exc}"})
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"device": device, "chunk": plan.chunk, "rows": rows, "pinned_input_seen_by_torch":
            _pinned_seen(np.array(images[:1024])) if device == "cuda" else None}


def measure_mode(model, datasets: dict[str, np.ndarray], labels: np.ndarray, precision: str, mode: str,
                 device: str, plan: EndToEndPlan, facts: dict, copy_ceiling: float | None,
                 reference: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each data set through one (precision, mode): median rate over repeats, answers checked."""
    rows, test_ids = [], None
    for name, pixels in datasets.items():
        times, ids = [], None
        with page_locked(pixels) if mode == "pre-pinned" else nullcontext():
            for _ in range(plan.repeats):
                seconds, ids, _ = run_once(model, pixels, precision, plan.chunk, mode, device)
                times.append(seconds)
        rate = len(pixels) / statistics.median(times)
        row = {"data": name, "images": len(pixels), "precision": precision, "mode": mode, "requested": device,
               "ran_on": facts, "median_s": statistics.median(times), "images_per_s": rate,
               "fraction_of_copy_ceiling": rate / copy_ceiling if copy_ceiling else None}
        if test_ids is None:  # the test set comes first
            test_ids = ids
            reference.setdefault("ids", ids)
            row |= {"accuracy": float((ids == labels).mean()),
                    "agreement_with_fp32": float((ids == reference["ids"]).mean())}
        else:  # tiled test images: every answer must repeat the test set's answer
            row["same_answers_as_test"] = float((ids == np.resize(test_ids, len(ids))).mean())
        rows.append(row)
        print(f"  {name:<18} {precision:<5} {mode:<10} {rate:>14,.0f} images/s "
              f"({row['fraction_of_copy_ceiling'] or 0:.2f} of the copy ceiling)", flush=True)
    return rows


def _pinned_seen(images: np.ndarray) -> bool:
    """Whether torch treats a registered array as pinned (else its copies would not overlap)."""
    import torch

    try:
        with page_locked(images):
            return bool(torch.from_numpy(images).is_pinned())
    except RuntimeError:
        return False
