"""The benchmark's GPU rows decide once which ran on the GPU: a CPU fallback is a failure, never a GPU row."""

from __future__ import annotations

import pytest

from benchmark.report import CPU, FELL_BACK, GPU, device_lines, row_status, targets, write_report

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product

CUDA_ORT = {"runtime": "onnxruntime", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "device": "cuda"}
FALLBACK_ORT = {"runtime": "onnxruntime", "providers": ["CPUExecutionProvider"], "device": "cpu"}


@pytest.mark.parametrize(("requested", "ran_on", "expected"), [
    ("cuda", CUDA_ORT, GPU),
    ("cuda", FALLBACK_ORT, FELL_BACK),
    # The CUDA provider listed, but not first: ONNX Runtime would place the nodes on the CPU.
    ("cuda", {"providers": ["CPUExecutionProvider", "CUDAExecutionProvider"]}, FELL_BACK),
    ("cuda", {"runtime": "torch", "device": "cuda:0"}, GPU),
    ("cuda", {"runtime": "torch", "device": "cpu"}, FELL_BACK),
    # A description that claims "cuda" while its providers say CPU: the providers win.
    ("cuda", {"providers": ["CPUExecutionProvider"], "device": "cuda"}, FELL_BACK),
    ("cuda", None, FELL_BACK),
    ("cpu", FALLBACK_ORT, CPU),
])
def test_row_status(requested, ran_on, expected):
    assert row_status(requested, ran_on) == expected


def sweep(rate: float) -> list[dict]:
    return [{"batch": b, "median_s": b / rate, "p99_s": 2 * b / rate, "images_per_s": rate} for b in (1, 65536)]


def inprocess_row(name: str, ran_on: dict, rate: float) -> dict:
    return {"name": name, "backend": "onnx-torch", "engine": "onnxruntime", "precision": "fp32",
            "placement": "host", "requested": "cuda", "ran_on": ran_on, "sweep": sweep(rate),
            "correctness": {"images": 10000, "accuracy": 0.9, "agreement_with_fp32": 1.0, "max_abs_dp": 0.0}}


def gpu_state(device: str = "cuda") -> dict:
    """A GPU run in which one ONNX Runtime row and the service's CUDA backend quietly fell back to the CPU."""
    flops_per_image = 1e6
    return {
        "device": device, "gpu": "NVIDIA H100 80GB HBM3" if device == "cuda" else None,
        "environment": {"cpu": "Intel Xeon", "cores": 16, "libraries": {"python": "3.12.3"}},
        "command": "python -m benchmark --device cuda", "machine": "nvidia-h100-80gb-hbm3", "quick": False,
        "date": "2026-11-28T00:00:00+00:00", "seconds": 1.0,
        "flops_per_image": flops_per_image,
        "stages": {
            "ceilings": {"matmul_n": 8192, "matmul_flops": {"fp32": 5e13, "tf32": 4e14, "fp16": 8e14, "bf16": 8e14},
                         "copy": {"bytes": 2**28, "rates": {"pinned": 5e10}, "images_per_s": 5e10 / 784}},
            "variants": {"reference": "onnxruntime CPU", "failures": [], "rows": [
                inprocess_row("really on cuda", CUDA_ORT, 2e7),
                # Fastest of all, so a report that trusted the request would pick it for the target.
                inprocess_row("quietly on cpu", FALLBACK_ORT, 9e9),
            ]},
            "service": {"services": {
                "cpu": {"requested": "cpu", "model_info": {"onnx-torch": FALLBACK_ORT}, "rows": [
                    {"kind": "single", "backend": "onnx-torch", "concurrency": 1, "rps": 100.0, "images_per_s": 100.0,
                     "p50_ms": 1.0, "p99_ms": 2.0, "statuses": {"200": 10}}]},
                "device": {"requested": device, "model_info": {"onnx-torch": FALLBACK_ORT}, "rows": [
                    {"kind": "single", "backend": "onnx-torch", "concurrency": 1, "rps": 999.0,
                     "images_per_s": 999.0, "p50_ms": 1.0, "p99_ms": 2.0, "statuses": {"200": 10}}]}},
                "parity": {"onnx-torch": {"identical_top1": 1.0, "identical_top_k_ids": 1.0, "max_abs_dp": 0.0}}},
        },
    }


def render(state: dict) -> str:
    return "\n".join(device_lines(state))


def test_a_cpu_fallback_is_a_failure_not_a_gpu_row():
    text = render(gpu_state())
    tables, failures = text.split("## GPU failures")
    assert "really on cuda" in tables
    assert "quietly on cpu" not in tables  # absent from every table and every target
    assert "quietly on cpu: asked for cuda, ran on ['CPUExecutionProvider']" in failures
    # The service's "GPU" rows came from a CPU provider: listed as a failure, no GPU service row.
    assert "service, device onnx-torch: asked for cuda, ran on ['CPUExecutionProvider']" in failures
    assert "| GPU |" not in tables and "999" not in tables


def test_targets_count_gpu_rows_only():
    found = {t["target"].split(" >=")[0]: t for t in targets(gpu_state())}
    best = found["in-process best"]
    assert best["measured"].endswith("(really on cuda)")
    assert best["met"] is True  # 2e7 images/s * 1 MFLOP = 2e13 of 5e13 FLOP/s: 0.4
    single = found["GPU service / CPU service, single requests"]
    assert single["measured"] is None and single["met"] is None  # no GPU service row to compare


def test_a_dry_run_says_so_in_its_name_and_title(tmp_path):
    state = gpu_state("cpu") | {"machine": "intel-xeon-16c"}
    for row in state["stages"]["variants"]["rows"]:
        row["requested"] = "cpu"
    path = write_report(state, tmp_path, [])
    text = path.read_text()
    assert path.name == "benchmark-intel-xeon-16c-cpu-dry-run.md"
    assert text.startswith("# Benchmark: intel-xeon-16c (CPU DRY RUN")
    assert "dry run: not a GPU figure" in text and "| yes |" not in text
    assert write_report(gpu_state(), tmp_path, []).name == "benchmark-nvidia-h100-80gb-hbm3.md"


def service_row(kind: str, rate: float, concurrency: int = 4) -> dict:
    return {"kind": kind, "backend": "onnx-torch", "concurrency": concurrency, "rps": rate, "images_per_s": rate,
            "p50_ms": 1.0, "p99_ms": 2.0, "statuses": {"200": 1}}


def test_service_targets_compare_the_same_request_kind_and_clients():
    state = gpu_state()
    services = state["stages"]["service"]["services"]
    services["device"]["model_info"] = {"onnx-torch": CUDA_ORT}
    services["cpu"]["rows"] = [service_row("single", 100.0, 1), service_row("single", 400.0, 16),
                               service_row("batch", 1000.0)]
    services["device"]["rows"] = [service_row("single", 150.0, 1), service_row("single", 300.0, 16),
                                  service_row("batch", 6000.0)]
    found = {t["target"]: t for t in targets(state)}
    single = next(t for name, t in found.items() if "single" in name)
    batch = next(t for name, t in found.items() if "batch" in name)
    assert single["measured"].startswith("0.75x") and single["met"] is False  # the worst concurrency counts
    assert batch["measured"].startswith("6.00x") and batch["met"] is True


def test_a_service_that_did_not_start_is_a_failure():
    state = gpu_state()
    state["stages"]["service"]["services"]["device"] = {"requested": "cuda", "rows": [],
                                                        "error": "TimeoutError: not ready after 300s"}
    failures = render(state).split("## GPU failures")[1]
    assert "service, device: asked for cuda, ran on did not load: TimeoutError: not ready after 300s" in failures


def test_parity_counts_identical_top1_and_the_largest_probability_gap():
    import numpy as np

    from benchmark.device import parity

    cpu = {"class_id": np.array([1, 2, 3]), "top_ids": np.array([[1, 0], [2, 0], [3, 0]]),
           "top_p": np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])}
    same = parity(cpu, cpu)
    assert same == {"images": 3, "identical_top1": 1.0, "identical_top_k_ids": 1.0, "max_abs_dp": 0.0}
    moved = {"class_id": np.array([1, 2, 0]), "top_ids": np.array([[1, 0], [2, 0], [0, 3]]),
             "top_p": np.array([[0.90005, 0.09995], [0.8, 0.2], [0.5, 0.5]])}
    result = parity(moved, cpu)
    assert result["identical_top1"] == 2 / 3 and result["identical_top_k_ids"] == 2 / 3
    assert abs(result["max_abs_dp"] - 5e-5) < 1e-9  # over the images whose top-k ids agree
