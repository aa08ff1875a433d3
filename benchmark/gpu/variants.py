"""Every GPU backend in-process: ONNX Runtime's CUDA provider and torch on CUDA, at several precisions.

Each variant takes the test images as uint8 and is timed the way it would run: the Predictor API
(numpy float32 in, numpy logits out, as the service calls it), or device-resident (input already
on the GPU, logits left there: ONNX Runtime with I/O binding, torch eager, CUDA graphs,
``torch.compile``). Every variant is also checked on all 10,000 test images against ONNX Runtime's
CPU provider in float32 on the same exported model: test accuracy, top-1 agreement, max |Δp|.

A variant asked for CUDA that did not get it (ONNX Runtime quietly falls back to its CPU
provider when the CUDA libraries do not load) becomes a failure, never a timed row.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.gpu.ceilings import matmul_precision, synchronize, torch_dtype
from benchmark.harness import Budget, time_calls
from fashion.backends import BACKENDS, load_artifact
from fashion.contract import INPUT_NAME, OUTPUT_NAME, preprocess, softmax

SCALE = np.float32(1.0 / 255.0)  # the contract's scaling (fashion.contract.preprocess), applied on the device


@dataclass(frozen=True)
class InprocessPlan:
    """What the in-process stage measures."""

    batch_sizes: tuple[int, ...]
    budget: Budget
    precisions: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16")
    graph_precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")
    compile_precision: str | None = "bf16"
    onnx_backends: tuple[str, ...] = ("onnx-torch", "onnx-tf")


@dataclass
class Variant:
    """One way to run one model: ``prepare`` (untimed) turns uint8 pixels into its input, ``call`` is timed."""

    name: str
    backend: str
    engine: str
    precision: str
    placement: str  # "host": numpy in and out; "device": input and logits stay on the device
    requested: str
    ran_on: dict[str, Any]
    prepare: Callable[[np.ndarray], Any]
    call: Callable[[Any], Any]
    to_numpy: Callable[[Any], np.ndarray] = field(default=lambda out: np.asarray(out))

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Float32 logits for uint8 pixels, on the host."""
        return self.to_numpy(self.call(self.prepare(pixels))).astype(np.float32)


def normalise(x, dtype):
    """uint8 device tensor -> model input: the contract's float32 scaling, then the variant's dtype."""
    import torch

    return (x.to(torch.float32) * float(SCALE)).to(dtype)


def preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA 13 and cuDNN in the ``nvidia-*`` pip packages torch already uses.

    ``preload_dlls`` exists since ONNX Runtime 1.21 (https://onnxruntime.ai/docs/execution-providers/
    CUDA-ExecutionProvider.html#preload-dlls); benchmark/gpu.sh also puts their folders on LD_LIBRARY_PATH.
    """
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
        except Exception as exc:  # the session's own loading (and its fallback check) still decides
            print(f"  onnxruntime.preload_dlls failed: {exc}", flush=True)


def cuda_precision(session) -> str:
    """``tf32`` when the CUDA provider runs float32 MatMul/Gemm on TF32 tensor cores (its ``use_tf32`` option)."""
    options = session.get_provider_options().get("CUDAExecutionProvider", {})
    return "tf32" if options.get("use_tf32", "0") == "1" else "fp32"


def session_variants(label: str, name: str, session, run_host, device: str, facts: dict) -> list[Variant]:
    """One session, two ways: the host path (numpy in and out), and I/O binding with both ends on the device."""
    ort_device = "cuda" if device == "cuda" else "cpu"

    def bind(pixels: np.ndarray):
        import onnxruntime as ort

        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(preprocess(pixels), ort_device, 0))
        binding.bind_output(OUTPUT_NAME, ort_device)
        return binding

    def run_bound(binding):
        session.run_with_iobinding(binding)
        return binding

    precision = cuda_precision(session) if device == "cuda" else "fp32"
    engine = f"onnxruntime {facts['providers'][0]}"
    return [
        Variant(label, name, engine, precision, "host", device, facts, preprocess, run_host),
        Variant(f"{label} io-binding", name, engine, precision, "device", device, facts, bind, run_bound,
                lambda binding: binding.copy_outputs_to_cpu()[0]),
    ]


def strict_fp32_session(model_dir: Path, name: str):
    """The CUDA provider with TF32 off (``use_tf32=0``), from the same verified bytes the backend loads.

    ONNX Runtime's CUDA provider may default to TF32 for float32 MatMul on Ampere and newer
    (https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#use_tf32), which
    is not the float32 the CPU computes: this session is the true-fp32 row beside it.
    """
    import onnxruntime as ort

    from fashion.backends.onnx_runtime import refuse_external_data
    from fashion.manifest import read_manifest, verify_artifact

    path = verify_artifact(model_dir, read_manifest(model_dir)["artifacts"][BACKENDS[name].artifact])
    model_bytes = Path(path).read_bytes()
    refuse_external_data(path, model_bytes)
    return ort.InferenceSession(model_bytes, providers=[("CUDAExecutionProvider", {"use_tf32": "0"}),
                                                        "CPUExecutionProvider"])


def onnx_variants(name: str, model_dir: Path, device: str) -> list[Variant]:
    """ONNX Runtime on ``device`` as the service loads it (host path and I/O binding); on CUDA also TF32 off."""
    predictor = load_artifact(model_dir, BACKENDS[name].artifact, "onnx", device=device)
    facts = predictor.describe()
    if device == "cuda" and facts["providers"][0] != "CUDAExecutionProvider":
        raise CpuFallbackError(f"asked for CUDAExecutionProvider, got {facts['providers']}", facts)
    if device == "cuda":
        facts["cuda_provider_options"] = predictor.session.get_provider_options().get("CUDAExecutionProvider", {})
    variants = session_variants(f"{name} ort", name, predictor.session, predictor.predict, device, facts)
    if device == "cuda" and cuda_precision(predictor.session) == "tf32":
        strict = strict_fp32_session(model_dir, name)
        strict_facts = {"runtime": "onnxruntime", "providers": strict.get_providers(),
                        "cuda_provider_options": strict.get_provider_options().get("CUDAExecutionProvider", {})}
        if strict_facts["providers"][0] == "CUDAExecutionProvider":
            run = lambda x, s=strict: s.run([OUTPUT_NAME], {INPUT_NAME: x})[0]  # noqa: E731
            variants += session_variants(f"{name} ort tf32-off", name, strict, run, device, strict_facts)
    return variants


class CpuFallbackError(RuntimeError):
    """A variant asked for the GPU ran on the CPU instead."""

    def __init__(self, message: str, ran_on: dict[str, Any]) -> None:
        super().__init__(message)
        self.ran_on = ran_on


class GraphRunner:
    """The model captured as a CUDA graph per input tensor (replay skips the per-kernel launch cost)."""

    def __init__(self, model, dtype) -> None:
        self.model, self.dtype = model, dtype

    def capture(self, x):
        """Warm up on a side stream, then capture one forward pass reading ``x``; returns (graph, output, x)."""
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                self.model(normalise(x, self.dtype))
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            out = self.model(normalise(x, self.dtype))
        return graph, out, x  # the graph reads x's memory: keep x alive as long as the graph


def torch_variants(model_dir: Path, device: str, plan: InprocessPlan) -> list[Variant]:
    """torch on ``device``: the Predictor API, eager per precision, CUDA graphs, ``torch.compile``."""
    import torch

    predictor = load_artifact(model_dir, "torch", "torch", device=device)
    facts = predictor.describe()
    if device == "cuda" and facts["device"] != "cuda" and not facts["device"].startswith("cuda:"):
        raise CpuFallbackError(f"asked for cuda, got {facts['device']}", facts)
    dev = torch.device(device)

    def upload(pixels: np.ndarray):
        return torch.from_numpy(np.array(pixels)).to(dev)  # a copy: IDX arrays are read-only

    def eager(model, precision: str):
        dtype = torch_dtype(precision)

        def run(x):
            with torch.inference_mode(), matmul_precision(precision):
                out = model(normalise(x, dtype))
            synchronize(device)
            return out
        return run

    to_host = lambda out: out.float().cpu().numpy()  # noqa: E731
    models = {p: copy.deepcopy(predictor.model).to(torch_dtype(p)) for p in plan.precisions}
    variants = [Variant("torch", "torch", "torch", "fp32", "host", device, facts, preprocess, predictor.predict)]
    variants += [Variant(f"torch eager {p}", "torch", "torch", p, "device", device, facts, upload,
                         eager(models[p], p), to_host) for p in plan.precisions]
    if device == "cuda":
        for p in plan.graph_precisions:
            runner = GraphRunner(models[p], torch_dtype(p))

            def replay(captured):
                captured[0].replay()
                torch.cuda.synchronize()
                return captured[1]

            variants.append(Variant(f"torch cuda-graph {p}", "torch", "torch CUDA graph", p, "device", device,
                                    facts, lambda pixels, r=runner: r.capture(upload(pixels)), replay, to_host))
    if plan.compile_precision:
        p = plan.compile_precision
        compiled = torch.compile(copy.deepcopy(models[p]), dynamic=True)
        variants.append(Variant(f"torch compile {p}", "torch", "torch.compile", p, "device", device, facts, upload,
                                eager(compiled, p), to_host))
    return variants


def build_variants(model_dirs: dict[str, Path], device: str, plan: InprocessPlan) -> tuple[list[Variant], list[dict]]:
    """Every variant that loads on ``device``; failures (fallbacks included) with the reason."""
    variants, failures = [], []
    if device == "cuda" and importlib.util.find_spec("onnxruntime"):
        preload_cuda_libraries()
    builders = [(name, lambda n=name: onnx_variants(n, model_dirs[BACKENDS[n].model], device))
                for name in plan.onnx_backends]
    builders.append(("torch", lambda: torch_variants(model_dirs[BACKENDS["torch"].model], device, plan)))
    for name, build in builders:
        try:
            variants += build()
        except CpuFallbackError as exc:
            failures.append({"name": name, "requested": device, "ran_on": exc.ran_on, "error": str(exc)})
        except Exception as exc:  # a broken install must not stop the other backends' rows
            failures.append({"name": name, "requested": device, "ran_on": None,
                             "error": f"{type(exc).__name__}: {exc}"})
    return variants, failures


def references(model_dirs: dict[str, Path], images: np.ndarray) -> dict[str, np.ndarray]:
    """Float32 probabilities of ONNX Runtime's CPU provider on each exported model: the fp32 reference."""
    probs = {}
    for name in ("onnx-torch", "onnx-tf"):
        predictor = load_artifact(model_dirs[BACKENDS[name].model], "onnx", "onnx", device="cpu")
        probs[BACKENDS[name].model] = softmax(predictor.predict(preprocess(images)))
    return probs


def check(variant: Variant, images: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Accuracy, top-1 agreement and max |Δp| with the fp32 reference, on all given images."""
    probs = softmax(variant.logits(images))
    top1 = probs.argmax(1)
    return {"images": len(images), "accuracy": float((top1 == labels).mean()),
            "agreement_with_fp32": float((top1 == reference.argmax(1)).mean()),
            "max_abs_dp": float(np.abs(probs - reference).max())}


def sweep(variant: Variant, images: np.ndarray, plan: InprocessPlan) -> list[dict[str, Any]]:
    """Median and p99 seconds per call at each batch size (images tiled from the test set)."""
    rows = []
    for size in plan.batch_sizes:
        pixels = np.resize(images, (size, *images.shape[1:]))
        prepared = variant.prepare(pixels)
        stats = time_calls(lambda v=variant, x=prepared: v.call(x), plan.budget)
        rows.append({"batch": size, **stats, "images_per_s": size / stats["median_s"]})
        print(f"  {variant.name:<26} batch {size:>6}: {stats['median_s'] * 1e3:9.3f} ms "
              f"(p99 {stats['p99_s'] * 1e3:9.3f}), {size / stats['median_s']:>13,.0f} images/s", flush=True)
    return rows


def run_variants(model_dirs: dict[str, Path], images: np.ndarray, labels: np.ndarray, device: str,
                 plan: InprocessPlan) -> dict[str, Any]:
    """The in-process stage, JSON-ready: per variant, where it ran, correctness and timings."""
    reference = references(model_dirs, images)
    variants, failures = build_variants(model_dirs, device, plan)
    rows = []
    for variant in variants:
        try:
            checked = check(variant, images, labels, reference[BACKENDS[variant.backend].model])
            rows.append({"name": variant.name, "backend": variant.backend, "engine": variant.engine,
                         "precision": variant.precision, "placement": variant.placement,
                         "requested": variant.requested, "ran_on": variant.ran_on, "correctness": checked,
                         "sweep": sweep(variant, images, plan)})
        except Exception as exc:  # e.g. a capture or compile that fails on this card: report, go on
            failures.append({"name": variant.name, "requested": device, "ran_on": variant.ran_on,
                             "error": f"{type(exc).__name__}: {exc}"})
    return {"device": device, "reference": "onnxruntime CPUExecutionProvider, float32, same exported model",
            "rows": rows, "failures": failures}
