"""The GPU rows of the benchmark (``python -m benchmark --device cuda``); with ``--device cpu`` a dry run.

Stages (docs/gpu.md describes each): ``ceilings`` (matmul per precision, host-to-device copy), ``variants``
(ONNX Runtime's CUDA provider with and without I/O binding, the torch variants, each checked on every test
image against ONNX Runtime's CPU provider in float32), ``endtoend`` (uint8 in host memory to answers in host
memory) and ``service`` (the service on the device against the service on the CPU, and parity). A stage that
fails is recorded with its error; the others run on. A row asked for CUDA whose runtime reports the CPU is a
failure, never a GPU row (benchmark.report.row_status). On the CPU every stage runs small, with CPU stand-ins,
so that CI checks the code a GPU runs.
"""

from __future__ import annotations

import copy
import importlib.util
import statistics
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.harness import Budget, multipart_body, run_wrk, served, time_calls
from benchmark.report import runs_on_gpu
from clients.client import npy_bytes
from fashion.backends import BACKENDS, load_artifact
from fashion.contract import INPUT_NAME, OUTPUT_NAME, preprocess, softmax

STAGES = ("ceilings", "variants", "endtoend", "service")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
IMAGE_BYTES = 28 * 28
SCALE = 1.0 / 255.0  # the contract's scaling (fashion.contract.preprocess), applied on the device


@dataclass(frozen=True)
class DevicePlan:
    """Sizes of every stage on one device."""

    matmul_n: int
    copy_bytes: int
    ceiling_budget: Budget
    batch_sizes: tuple[int, ...]
    budget: Budget
    precisions: tuple[str, ...]
    graph_precisions: tuple[str, ...]
    compile_precision: str
    chunk: int
    synthetic: int
    endtoend_precisions: tuple[str, ...]
    service_seconds: float
    concurrency: tuple[int, ...] = (1, 16)
    batch_images: int = 4096
    batch_seconds: float = 4.0  # 4,096-image requests on a CPU take about a second each


GPU_PLAN = DevicePlan(8192, 256 * 2**20, Budget(warmup_seconds=0.2, min_calls=10, min_seconds=0.5, max_calls=100),
                      (1, 8, 64, 512, 4096, 16384, 65536),
                      Budget(warmup_seconds=0.1, min_calls=20, min_seconds=0.2, max_calls=5000), PRECISIONS,
                      ("fp32", "fp16", "bf16"), "bf16", 65536, 1_000_000, ("fp32", "tf32", "bf16"), 4.0)
# The dry run: the same stages, small. fp16 has no fast CPU kernels and compiling bf16 on two cores takes
# minutes, so the stand-in compiles fp32; CUDA graphs need CUDA.
CPU_PLAN = DevicePlan(512, 32 * 2**20, Budget(warmup_seconds=0.02, min_calls=3, min_seconds=0.05, max_calls=20),
                      (1, 64, 1024),
                      Budget(warmup_seconds=0.02, min_calls=5, min_seconds=0.05, max_calls=200),
                      ("fp32", "tf32", "bf16"), (), "fp32", 4096, 50_000, ("fp32", "bf16"), 1.0, (1, 4))


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


def normalise(x, dtype):
    """uint8 device tensor -> model input: the contract's float32 scaling, then the row's dtype."""
    return (x.float() * SCALE).to(dtype)


def synchronized(fn: Callable[[], object], device: str) -> Callable[[], None]:
    """``fn`` followed by a wait for the device, so that the harness's clock times the device's work."""
    return lambda: (fn(), synchronize(device))


# --- ceilings ---------------------------------------------------------------------------------------------------

def measure_ceilings(device: str, plan: DevicePlan) -> dict[str, Any]:
    """FLOP/s of an ``n x n`` matmul per precision; bytes/s of one uint8 host-to-device copy (pinned, pageable).

    On the CPU (a dry run) the copy is memory to memory; pinning does not apply there.
    """
    import torch

    n, flops = plan.matmul_n, {}
    generator = torch.Generator(device=device).manual_seed(0)
    for precision in PRECISIONS:
        a, b = (torch.randn(n, n, device=device, generator=generator).to(torch_dtype(precision)) for _ in range(2))
        with matmul_precision(precision):
            flops[precision] = 2 * n**3 / time_calls(synchronized(lambda a=a, b=b: a @ b, device),
                                                     plan.ceiling_budget)["median_s"]
        print(f"  matmul {precision}: {flops[precision] / 1e12:8.2f} TFLOP/s", flush=True)
    source = torch.randint(0, 256, (plan.copy_bytes,), dtype=torch.uint8)
    target = torch.empty(plan.copy_bytes, dtype=torch.uint8, device=device)
    hosts = {"pageable": source, **({"pinned": source.pin_memory()} if device == "cuda" else {})}
    rates = {kind: plan.copy_bytes / time_calls(synchronized(lambda h=host: target.copy_(h, non_blocking=True),
                                                             device), plan.ceiling_budget)["median_s"]
             for kind, host in hosts.items()}
    print(f"  host-to-device copy: {', '.join(f'{k} {v / 1e9:.2f} GB/s' for k, v in rates.items())}", flush=True)
    return {"matmul_n": n, "matmul_flops": flops, "copy": {"bytes": plan.copy_bytes, "rates": rates,
                                                           "images_per_s": max(rates.values()) / IMAGE_BYTES}}


# --- in-process variants ----------------------------------------------------------------------------------------

@dataclass
class Variant:
    """One way to run one model: ``prepare`` (untimed) turns uint8 pixels into its input, ``call`` is timed."""

    name: str
    backend: str
    precision: str
    placement: str  # "host": numpy in and out; "device": input and logits stay on the device
    ran_on: dict[str, Any]
    prepare: Callable[[np.ndarray], Any]
    call: Callable[[Any], Any]
    to_numpy: Callable[[Any], np.ndarray] = field(default=np.asarray)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Float32 logits for uint8 pixels, on the host."""
        return self.to_numpy(self.call(self.prepare(pixels))).astype(np.float32)


def session_variants(label: str, backend: str, session, run_host, device: str, facts: dict) -> list[Variant]:
    """One ONNX Runtime session two ways: numpy in and out, and I/O binding with both ends on the device."""
    import onnxruntime as ort

    def bind(pixels: np.ndarray):
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(preprocess(pixels), device, 0))
        binding.bind_output(OUTPUT_NAME, device)
        return binding

    def run_bound(binding):
        session.run_with_iobinding(binding)
        return binding

    options = session.get_provider_options().get("CUDAExecutionProvider", {})
    precision = "tf32" if options.get("use_tf32", "0") == "1" else "fp32"  # the provider's TF32 default
    return [Variant(label, backend, precision, "host", facts, preprocess, run_host),
            Variant(f"{label} io-binding", backend, precision, "device", facts, bind, run_bound,
                    lambda binding: binding.copy_outputs_to_cpu()[0])]


def onnx_variants(backend: str, model_dir: Path, device: str) -> list[Variant]:
    """ONNX Runtime as the service loads it; on CUDA with TF32 on, also a session with ``use_tf32=0``.

    The CUDA provider may default to TF32 for float32 MatMul on Ampere and newer
    (https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#use_tf32), which is
    not the float32 the CPU computes: the second session gives the true-fp32 rows beside it.
    """
    import onnxruntime as ort

    predictor = load_artifact(model_dir, BACKENDS[backend].artifact, "onnx", device=device)
    facts = predictor.describe()
    found = session_variants(f"{backend} ort", backend, predictor.session, predictor.predict, device, facts)
    if found[0].precision == "tf32":
        from fashion.backends.onnx_runtime import refuse_external_data
        from fashion.manifest import read_manifest, verify_artifact

        path = verify_artifact(model_dir, read_manifest(model_dir)["artifacts"][BACKENDS[backend].artifact])
        model_bytes = Path(path).read_bytes()  # the same verified bytes the backend loads
        refuse_external_data(path, model_bytes)
        strict = ort.InferenceSession(model_bytes, providers=[("CUDAExecutionProvider", {"use_tf32": "0"}),
                                                              "CPUExecutionProvider"])
        run = lambda x, s=strict: s.run([OUTPUT_NAME], {INPUT_NAME: x})[0]  # noqa: E731
        found += session_variants(f"{backend} ort tf32-off", backend, strict, run, device,
                                  {"runtime": "onnxruntime", "providers": strict.get_providers()})
    return found


def torch_variants(model_dir: Path, device: str, plan: DevicePlan) -> list[Variant]:
    """torch on ``device``: the service's path, eager per precision, CUDA graphs, ``torch.compile``."""
    import torch

    predictor = load_artifact(model_dir, "torch", "torch", device=device)
    facts = predictor.describe()

    def upload(pixels: np.ndarray):
        return torch.from_numpy(np.array(pixels)).to(device)  # a copy: IDX arrays are read-only

    def eager(model, precision: str):
        def run(x):
            with torch.inference_mode(), matmul_precision(precision):
                out = model(normalise(x, torch_dtype(precision)))
            synchronize(device)
            return out
        return run

    def graph(model, precision: str):
        """Capture one forward pass reading ``x`` as a CUDA graph (replay skips the per-kernel launches)."""
        def capture(pixels: np.ndarray):
            x, stream = upload(pixels), torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):
                    model(normalise(x, torch_dtype(precision)))
            torch.cuda.current_stream().wait_stream(stream)
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph), torch.inference_mode():
                out = model(normalise(x, torch_dtype(precision)))
            return cuda_graph, out, x  # the graph reads x's memory: keep x alive with it
        return capture

    def replay(captured):
        captured[0].replay()
        torch.cuda.synchronize()
        return captured[1]

    to_host = lambda out: out.float().cpu().numpy()  # noqa: E731
    models = {p: copy.deepcopy(predictor.model).to(torch_dtype(p)) for p in plan.precisions}
    found = [Variant("torch", "torch", "fp32", "host", facts, preprocess, predictor.predict)]
    found += [Variant(f"torch eager {p}", "torch", p, "device", facts, upload, eager(models[p], p), to_host)
              for p in plan.precisions]
    if device == "cuda":
        found += [Variant(f"torch cuda-graph {p}", "torch", p, "device", facts, graph(models[p], p), replay, to_host)
                  for p in plan.graph_precisions]
    p = plan.compile_precision
    compiled = torch.compile(copy.deepcopy(models[p]), dynamic=True)
    found.append(Variant(f"torch compile {p}", "torch", p, "device", facts, upload, eager(compiled, p), to_host))
    return found


def check(variant: Variant, images: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Accuracy, top-1 agreement and max |Δp| with the float32 reference, on every given image."""
    probs = softmax(variant.logits(images))
    return {"images": len(images), "accuracy": float((probs.argmax(1) == labels).mean()),
            "agreement_with_fp32": float((probs.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_dp": float(np.abs(probs - reference).max())}


def sweep(variant: Variant, images: np.ndarray, plan: DevicePlan) -> list[dict[str, Any]]:
    """Median and p99 seconds per call at each batch size (images tiled from the test set)."""
    rows = []
    for size in plan.batch_sizes:
        prepared = variant.prepare(np.resize(images, (size, *images.shape[1:])))
        stats = time_calls(lambda v=variant, x=prepared: v.call(x), plan.budget)
        rows.append({"batch": size, **stats, "images_per_s": size / stats["median_s"]})
        print(f"  {variant.name:<26} batch {size:>6}: {stats['median_s'] * 1e3:9.3f} ms, "
              f"{rows[-1]['images_per_s']:>13,.0f} images/s", flush=True)
    return rows


def run_variants(model_dirs: dict[str, Path], images: np.ndarray, labels: np.ndarray, device: str,
                 plan: DevicePlan) -> dict[str, Any]:
    """Every variant: where it ran, correctness and timings; failures (fallbacks included) with the reason."""
    if device == "cuda" and importlib.util.find_spec("onnxruntime"):
        import onnxruntime as ort

        # onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* pip packages torch uses (ONNX Runtime >= 1.21).
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    onnx = ("onnx-torch", "onnx-tf")
    reference = {BACKENDS[n].model: softmax(load_artifact(model_dirs[BACKENDS[n].model], "onnx", "onnx",
                                                          device="cpu").predict(preprocess(images))) for n in onnx}
    builders = {n: lambda n=n: onnx_variants(n, model_dirs[BACKENDS[n].model], device) for n in onnx}
    builders["torch"] = lambda: torch_variants(model_dirs[BACKENDS["torch"].model], device, plan)
    rows, failures = [], []
    for name, build in builders.items():
        try:
            variants = build()
        except Exception as exc:  # a broken install must not cost the other backends their rows
            failures.append({"name": name, "requested": device, "ran_on": None,
                             "error": f"{type(exc).__name__}: {exc}"})
            continue
        if device == "cuda" and not runs_on_gpu(variants[0].ran_on):  # a quiet fallback is never timed
            failures.append({"name": name, "requested": device, "ran_on": variants[0].ran_on,
                             "error": "asked for CUDA, loaded on the CPU"})
            continue
        for v in variants:
            try:
                rows.append({"name": v.name, "backend": v.backend, "precision": v.precision, "placement": v.placement,
                             "requested": device, "ran_on": v.ran_on,
                             "correctness": check(v, images, labels, reference[BACKENDS[v.backend].model]),
                             "sweep": sweep(v, images, plan)})
            except Exception as exc:  # e.g. a capture or compile that fails on this card: report, go on
                failures.append({"name": v.name, "requested": device, "ran_on": v.ran_on,
                                 "error": f"{type(exc).__name__}: {exc}"})
    return {"reference": "onnxruntime CPUExecutionProvider, float32, same exported model", "rows": rows,
            "failures": failures}


# --- end to end from host memory --------------------------------------------------------------------------------

@contextmanager
def page_locked(array: np.ndarray):
    """``cudaHostRegister`` an existing array for the duration (torch then sees it as pinned)."""
    import torch

    cudart, pointer = torch.cuda.cudart(), array.ctypes.data
    if int(status := cudart.cudaHostRegister(pointer, array.nbytes, 0)) != 0:
        raise RuntimeError(f"cudaHostRegister failed: {status}")
    try:
        yield
    finally:
        cudart.cudaHostUnregister(pointer)


def answer(model, x, dtype):
    """Class id (uint8) and its probability (float32) per image, computed where ``x`` is."""
    import torch

    confidence, ids = torch.softmax(model(normalise(x, dtype)).float(), dim=1).max(dim=1)
    return ids.to(torch.uint8), confidence


def classify_host(model, pixels: np.ndarray, precision: str, chunk: int, mode: str, device: str) -> np.ndarray:
    """Class ids in host memory for uint8 ``pixels`` in host memory.

    On CUDA, chunks go to the GPU on a copy stream while the previous chunk is classified on the compute
    stream, fed straight from the (page-locked) array, or, ``staged``, through two pinned buffers the CPU
    fills. On the CPU (a dry run) the same chunks run in order.
    """
    import torch

    dtype, n, source = torch_dtype(precision), len(pixels), torch.from_numpy(pixels)
    if device != "cuda":
        with torch.inference_mode():
            return np.concatenate([answer(model, source[s:s + chunk], dtype)[0].numpy() for s in range(0, n, chunk)])
    copy_stream, compute = torch.cuda.Stream(), torch.cuda.current_stream()
    ids_host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    device_in = [torch.empty((chunk, 28, 28), dtype=torch.uint8, device="cuda") for _ in range(2)]
    staging = [torch.empty((chunk, 28, 28), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    copied, consumed = [torch.cuda.Event() for _ in range(2)], [torch.cuda.Event() for _ in range(2)]
    for k, start in enumerate(range(0, n, chunk)):
        slot, size = k % 2, min(chunk, n - start)
        host = source[start:start + size]
        if mode == "staged":
            copied[slot].synchronize()  # the copy engine has finished reading this staging buffer
            host = staging[slot][:size].copy_(host)
        with torch.cuda.stream(copy_stream):
            copy_stream.wait_event(consumed[slot])  # the model has finished with this device buffer
            device_in[slot][:size].copy_(host, non_blocking=True)
            copied[slot].record(copy_stream)
        compute.wait_event(copied[slot])
        with torch.inference_mode(), matmul_precision(precision):
            ids_host[start:start + size].copy_(answer(model, device_in[slot][:size], dtype)[0], non_blocking=True)
        consumed[slot].record(compute)
    torch.cuda.synchronize()
    return ids_host.numpy()


def run_endtoend(model_dir: Path, images: np.ndarray, labels: np.ndarray, device: str, plan: DevicePlan,
                 copy_images_per_s: float | None) -> dict[str, Any]:
    """Every (data set, precision, mode): median rate of three passes, fraction of the copy ceiling, answers checked.

    Modes: ``pre-pinned`` (the array page-locked before the clock: what the pipeline reaches), ``registered``
    (``cudaHostRegister`` inside the clock), ``staged`` (CPU copies into pinned buffers); ``in-order`` on the CPU.
    """
    predictor = load_artifact(model_dir, "torch", "torch", device=device)
    datasets = {"test": np.array(images), f"synthetic {plan.synthetic:,}":
                np.ascontiguousarray(np.resize(images, (plan.synthetic, *images.shape[1:])))}
    rows: list[dict[str, Any]] = []
    fp32_ids = None  # the first precision's test answers, which the others are held to
    for precision in plan.endtoend_precisions:
        model = copy.deepcopy(predictor.model).to(torch_dtype(precision))
        for mode in ("pre-pinned", "registered", "staged") if device == "cuda" else ("in-order",):
            test_ids = None  # this precision's test answers, which its tiled set must repeat
            for name, pixels in datasets.items():
                row = {"data": name, "images": len(pixels), "precision": precision, "mode": mode,
                       "requested": device, "ran_on": predictor.describe()}
                try:
                    with page_locked(pixels) if mode == "pre-pinned" else nullcontext():
                        times = []
                        for _ in range(3):
                            began = time.perf_counter()
                            with page_locked(pixels) if mode == "registered" else nullcontext():
                                ids = classify_host(model, pixels, precision, plan.chunk, mode, device)
                            times.append(time.perf_counter() - began)
                except Exception as exc:  # say, cudaHostRegister refused: the other modes still run
                    rows.append({**row, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                rate = len(pixels) / statistics.median(times)
                row |= {"images_per_s": rate, "fraction_of_copy_ceiling": rate / copy_images_per_s
                        if copy_images_per_s else None}
                if name == "test":
                    test_ids = ids
                    fp32_ids = ids if fp32_ids is None else fp32_ids
                    row |= {"accuracy": float((ids == labels).mean()),
                            "agreement_with_fp32": float((ids == fp32_ids).mean())}
                elif test_ids is not None:  # tiled test images: every answer must repeat the test set's
                    row["same_answers_as_test"] = float((ids == np.resize(test_ids, len(ids))).mean())
                rows.append(row)
                print(f"  {name:<18} {precision:<5} {mode:<10} {rate:>14,.0f} images/s", flush=True)
    return {"chunk": plan.chunk, "rows": rows}


# --- the service on the device against the service on the CPU ---------------------------------------------------

def classify_all(url: str, backend: str, images: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """Every image through ``/classify_array``: class ids, top-k ids and top-k probabilities."""
    import httpx

    answers = []
    with httpx.Client(timeout=120) as client:
        for start in range(0, len(images), chunk):
            answers += client.post(f"{url}/classify_array", params={"backend": backend},
                                   content=npy_bytes(images[start:start + chunk]),
                                   headers={"content-type": "application/x-npy"}).raise_for_status().json()
    return {"class_id": np.array([a["class_id"] for a in answers]),
            "top_ids": np.array([[t["class_id"] for t in a["top_k"]] for a in answers]),
            "top_p": np.array([[t["probability"] for t in a["top_k"]] for a in answers])}


def parity(device_answers: dict[str, np.ndarray], cpu_answers: dict[str, np.ndarray]) -> dict[str, Any]:
    """Identical top-1 (fraction) and max |Δp| over the top-k probabilities where the top-k ids agree."""
    same_top = (device_answers["top_ids"] == cpu_answers["top_ids"]).all(axis=1)
    dp = np.abs(device_answers["top_p"] - cpu_answers["top_p"])[same_top]
    return {"images": len(same_top), "identical_top1": float((device_answers["class_id"] ==
                                                               cpu_answers["class_id"]).mean()),
            "identical_top_k_ids": float(same_top.mean()), "max_abs_dp": float(dp.max()) if dp.size else None}


def measure_service(asked: str, models: Path | None, images: np.ndarray, plan: DevicePlan, work: Path,
                    answers: dict) -> dict[str, Any]:
    """One service with ``FASHION_DEVICE=asked``: /model_info, wrk rows per backend, every test image's answer."""
    import httpx

    from fashion.imaging import encode_png

    boundary, backends = uuid.uuid4().hex, ("onnx-torch", "torch")
    bodies = {"single": (work / "single.bin", f"multipart/form-data; boundary={boundary}", 1),
              "batch": (work / "batch.npy", "application/x-npy", plan.batch_images)}
    bodies["single"][0].write_bytes(multipart_body(encode_png(images[0]), boundary))
    bodies["batch"][0].write_bytes(npy_bytes(np.resize(images, (plan.batch_images, *images.shape[1:]))))
    env = {"FASHION_DEVICE": asked, "FASHION_BACKENDS": ",".join(backends),
           "FASHION_MAX_IMAGES": str(plan.batch_images), "FASHION_MAX_BODY_BYTES": str(16 * 2**20),
           "FASHION_MAX_QUEUED_IMAGES": str(plan.batch_images * 8)}
    record: dict[str, Any] = {"requested": asked, "rows": []}
    began = time.perf_counter()
    with served(work, env, timeout=300, models=models) as server:
        info = httpx.post(f"{server.url}/model_info", timeout=30).json()
        record |= {"start_s": time.perf_counter() - began, "model_info": {b: info["backends"].get(b, {})
                                                                          for b in backends}}
        for backend in backends:
            runs = [("single", c, f"/classify?backend={backend}") for c in plan.concurrency]
            for kind, clients, route in [*runs, ("batch", 4, f"/classify_array?backend={backend}")]:
                path, content_type, per_request = bodies[kind]
                seconds = plan.batch_seconds if kind == "batch" else plan.service_seconds
                run_wrk(server.url + route, clients, 1.0, path, content_type=content_type, timeout=60)
                stats = run_wrk(server.url + route, clients, seconds, path, content_type=content_type, timeout=60)
                record["rows"].append({"kind": kind, "backend": backend, "concurrency": clients, "rps": stats["rps"],
                                       "images_per_s": stats["rps"] * per_request, "p50_ms": stats["p50_us"] / 1e3,
                                       "p99_ms": stats["p99_us"] / 1e3, "statuses": stats["statuses"]})
                print(f"    {asked} {kind:<6} {backend:<11} c={clients:<3} "
                      f"{record['rows'][-1]['images_per_s']:>12,.0f} images/s", flush=True)
            answers[(asked, backend)] = classify_all(server.url, backend, images, plan.batch_images)
    return record


def run_service(models: Path | None, images: np.ndarray, device: str, plan: DevicePlan) -> dict[str, Any]:
    """The CPU service, then the ``device`` service (never together); parity per backend."""
    services, answers = {}, {}
    for label, asked in (("cpu", "cpu"), ("device", device)):
        try:
            services[label] = measure_service(asked, models, images, plan, Path(tempfile.mkdtemp()), answers)
        except Exception as exc:  # one service failing to start must not lose the other's rows
            services[label] = {"requested": asked, "rows": [], "error": f"{type(exc).__name__}: {exc}"}
    both = [b for (asked, b) in answers if asked == device and ("cpu", b) in answers]
    return {"services": services, "parity": {b: parity(answers[(device, b)], answers[("cpu", b)]) for b in both}}


def run_device_stages(stages: list[str], device: str, model_dirs: dict[str, Path], models: Path | None,
                      images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The asked stages in order; a stage that fails is ``{"error": ...}`` and the others still run."""
    plan = GPU_PLAN if device == "cuda" else CPU_PLAN
    found: dict[str, Any] = {}
    for name in [s for s in STAGES if s in stages]:
        print(f"stage {name} on {device}", flush=True)
        try:
            if name == "ceilings":
                found[name] = measure_ceilings(device, plan)
            elif name == "variants":
                found[name] = run_variants(model_dirs, images, labels, device, plan)
            elif name == "endtoend":
                ceiling = (found.get("ceilings") or {}).get("copy", {}).get("images_per_s")
                found[name] = run_endtoend(model_dirs[BACKENDS["torch"].model], images, labels, device, plan, ceiling)
            else:
                found[name] = run_service(models, images, device, plan)
        except Exception as exc:  # one broken stage (say, BentoML missing) must not cost the others their run
            traceback.print_exc()
            found[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return found
