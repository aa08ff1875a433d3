"""In-process part: the machine's matmul ceiling, every backend at several batch sizes, correctness.

Runs where only torch and onnxruntime exist (a GPU box without TensorFlow or
BentoML): backends whose runtime is missing are listed as skipped, with why.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.harness import Budget, time_calls
from fashion.backends import BACKENDS, Predictor, load_artifact
from fashion.contract import preprocess
from fashion.manifest import read_manifest

BATCH_SIZES = (1, 8, 64, 256, 1024)
RUNTIME_MODULES = {"onnx": "onnxruntime", "torch": "torch", "savedmodel": "tensorflow"}


def flops_per_image(layer_sizes: list[int]) -> int:
    """Multiply-adds of the MLP times two."""
    return 2 * sum(a * b for a, b in itertools.pairwise(layer_sizes))


def matmul_gflops(n: int, budget: Budget, device: str) -> dict[str, float]:
    """Square float32 matmul throughput of each library present (the ceiling is the best of them)."""
    results: dict[str, float] = {}
    flops = 2 * n**3
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    if device == "cpu":
        results["numpy"] = flops / time_calls(lambda: a @ b, budget)["median_s"] / 1e9
    if importlib.util.find_spec("torch"):
        import torch

        ta, tb = (torch.from_numpy(m).to(device) for m in (a, b))

        def torch_mm():
            ta @ tb
            if device == "cuda":
                torch.cuda.synchronize()

        results["torch"] = flops / time_calls(torch_mm, budget)["median_s"] / 1e9
    if importlib.util.find_spec("onnxruntime"):
        matmul = _ort_matmul(b, device, a)
        if matmul is not None:  # None: ONNX Runtime fell back to the CPU, which is no ceiling for the GPU
            results["onnxruntime"] = flops / time_calls(matmul, budget)["median_s"] / 1e9
    return results


def _ort_matmul(weight: np.ndarray, device: str, x: np.ndarray):
    """ONNX Runtime's own MatMul kernel (MLAS on CPU) on a one-node graph; None if it is not on ``device``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = weight.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(model.SerializeToString(), providers=providers)
    if session.get_providers()[0] != providers[0]:
        return None
    return lambda: session.run(None, {"x": x})


def load_backends(model_dirs: dict[str, Path], device: str) -> tuple[dict[str, Predictor], dict[str, str]]:
    """Every backend whose runtime is installed and whose artifact exists; the rest with the reason."""
    loaded: dict[str, Predictor] = {}
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("torch"):
        # torch.compile's first import segfaults once TensorFlow's libraries are loaded (seen with
        # torch 2.14 and TensorFlow 2.21 here), so bring it in before the SavedModel backend.
        import torch._dynamo  # noqa: F401
    for name, spec in BACKENDS.items():
        module = RUNTIME_MODULES[spec.runtime]
        model_dir = model_dirs.get(spec.model)
        if importlib.util.find_spec(module) is None:
            skipped[name] = f"{module} is not installed here"
        elif model_dir is None:
            skipped[name] = f"no exported {spec.model} model"
        elif spec.artifact not in read_manifest(model_dir)["artifacts"]:
            skipped[name] = f"{spec.model} has no {spec.artifact} artifact (dropped by the export)"
        else:
            loaded[name] = load_artifact(model_dir, spec.artifact, spec.runtime, device=device)
    if "torch" in loaded:
        loaded["torch-compile"] = _compiled(loaded["torch"])
    return loaded, skipped


def _compiled(predictor):
    """``torch.compile`` of the PyTorch backend's module (an extra variant worth showing)."""
    import copy

    import torch

    variant = copy.copy(predictor)
    variant.model = torch.compile(predictor.model, dynamic=True)
    return variant


def sweep(backends: dict[str, Predictor], images: np.ndarray, batch_sizes: tuple[int, ...],
          budget: Budget) -> list[dict[str, Any]]:
    """Per backend and batch size: median and p99 seconds per call, images/s."""
    rows = []
    for name, predictor in backends.items():
        for size in batch_sizes:
            x = np.ascontiguousarray(images[:size])
            stats = time_calls(lambda p=predictor, x=x: p.predict(x), budget)
            rows.append({"backend": name, "batch": size, **stats, "images_per_s": size / stats["median_s"]})
            print(f"  {name:<14} batch {size:>5}: {stats['median_s'] * 1e3:8.3f} ms median, "
                  f"{size / stats['median_s']:>10,.0f} images/s", flush=True)
    return rows


def wrapper_overhead(backends: dict[str, Predictor], image: np.ndarray, budget: Budget) -> dict[str, float]:
    """Batch-1 cost of our ONNX Runtime path against a bare ``session.run`` on the same input."""
    predictor = backends["onnx-torch"]
    session = predictor.session
    bare = time_calls(lambda: session.run(None, {"images": image}), budget)["median_s"]
    ours = time_calls(lambda: predictor.predict(image), budget)["median_s"]
    return {"bare_session_run_s": bare, "wrapper_s": ours, "ratio": ours / bare}


def correctness(backends: dict[str, Predictor], images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Test accuracy of each backend and top-1 agreement of every pair, on all given images."""
    predictions = {name: np.concatenate([p.predict(images[i:i + 1024]).argmax(1)
                                         for i in range(0, len(images), 1024)]) for name, p in backends.items()}
    names = list(predictions)
    return {
        "images": len(images),
        "accuracy": {n: float((predictions[n] == labels).mean()) for n in names},
        "agreement": {a: {b: float((predictions[a] == predictions[b]).mean()) for b in names} for a in names},
    }


def run_inprocess(model_dirs: dict[str, Path], images_u8: np.ndarray, labels: np.ndarray, device: str,
                  budget: Budget, matmul_n: int) -> dict[str, Any]:
    """The whole in-process part as one JSON-ready dict."""
    images = preprocess(images_u8)
    backends, skipped = load_backends(model_dirs, device)
    layer_sizes = read_manifest(next(iter(model_dirs.values())))["architecture"]["layer_sizes"]
    print("matmul ceiling...", flush=True)
    gflops = matmul_gflops(matmul_n, budget, device)
    ceiling = max(gflops.values()) * 1e9 / flops_per_image(layer_sizes)
    print(f"  {gflops} GFLOP/s -> {ceiling:,.0f} images/s for this model", flush=True)
    print("backends x batch sizes...", flush=True)
    rows = sweep(backends, images, BATCH_SIZES, budget)
    for row in rows:
        row["fraction_of_ceiling"] = row["images_per_s"] / ceiling
    return {
        "device": device, "layer_sizes": layer_sizes, "flops_per_image": flops_per_image(layer_sizes),
        "matmul_gflops": gflops, "ceiling_images_per_s": ceiling, "skipped": skipped,
        "providers": {n: p.describe() for n, p in backends.items()},
        "sweep": rows, "wrapper_overhead": wrapper_overhead(backends, images[:1], budget)
        if "onnx-torch" in backends else None,
        "correctness": correctness({n: p for n, p in backends.items() if n != "torch-compile"}, images, labels),
    }
