"""The benchmark report's sentences follow its numbers: each one says something else when the data do."""

from __future__ import annotations

from benchmark.report import ceiling_sentence, generator_sentence, matmul_devices


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
