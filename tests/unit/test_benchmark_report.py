"""The benchmark report's sentences follow its numbers: each one says something else when the data do."""

from __future__ import annotations

import pytest

from benchmark.report import ceiling_sentence, generator_sentence, matmul_devices

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def gpu_run(ort_device: str) -> dict:
    return {"device": "cuda", "flops_per_image": 2.92e6, "matmul_gflops": {"torch": 46455.0, "onnxruntime": 1004.0},
            "providers": {"onnx-torch": {"runtime": "onnxruntime", "device": ort_device},
                          "torch": {"runtime": "torch", "device": "cuda"}}}


def test_an_onnx_runtime_matmul_that_fell_back_to_the_cpu_is_labelled_so_and_not_counted():
    assert matmul_devices(gpu_run("cpu")) == {"torch": "cuda", "onnxruntime": "cpu"}
    assert "onnxruntime 1004 GFLOP/s on cpu; the best on cuda counts: torch)" in ceiling_sentence(gpu_run("cpu"))
    assert matmul_devices(gpu_run("cuda")) == {"torch": "cuda", "onnxruntime": "cuda"}


def test_the_load_generator_sentence_depends_on_how_much_cpu_wrk_used():
    assert generator_sentence(0.07, 2).startswith("The load generator was light")
    assert generator_sentence(1.2, 2).startswith("The load generator competed with the server")


def run_with_http(batch_images_per_s: float) -> dict:
    sweep = [{"backend": b, "batch": n, "images_per_s": rate * n, "median_s": 1 / rate,
              "fraction_of_ceiling": rate / 2000}
             for b, rate in (("onnx-torch", 1000.0), ("onnx-int8", 3000.0)) for n in (1, 1024)]
    single = {"kind": "single", "concurrency": 64}
    rows = [{**single, "target": "bare-starlette", "rps": 3000.0}, {**single, "target": "onnx-torch", "rps": 1500.0},
            {"kind": "batch", "target": "onnx-torch", "images_per_s": batch_images_per_s, "concurrency": 4}]
    agreement = {"onnx-torch": {"onnx-torch": 1.0, "onnx-int8": 0.99}, "onnx-int8": {"onnx-torch": 0.99,
                                                                                      "onnx-int8": 1.0}}
    return {"inprocess": {"sweep": sweep, "correctness": {"accuracy": {"onnx-torch": 0.9, "onnx-int8": 0.89},
                                                          "agreement": agreement}},
            "http": {"rows": rows, "batch_images": 256}}


def test_the_conclusions_say_whether_batch_requests_lift_throughput_from_the_numbers():
    from benchmark.__main__ import conclusions

    assert "as .npy lifts throughput: 40,000 images/s" in conclusions(run_with_http(40000.0))[-1]
    assert "as .npy does not lift throughput: 1,000 images/s" in conclusions(run_with_http(1000.0))[-1]
    assert "1.50 of the float32 ceiling (above it)" in conclusions(run_with_http(1000.0))[0]
