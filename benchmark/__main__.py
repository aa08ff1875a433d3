"""Compare every backend side by side: ``python -m benchmark`` (``make bench``).

Writes ``results/benchmark-<machine>.md`` with the same data as JSON and PNG plots. Stages (``--stages``):

* ``inprocess``: the machine's matmul ceiling; every backend in-process at batch sizes 1 to 1,024; accuracy and
  top-1 agreement on the 10,000 test images;
* on a GPU (``--device cuda``, the default where torch sees one), the GPU rows of benchmark.device:
  ``ceilings``, ``variants`` (ONNX Runtime's CUDA provider with and without I/O binding, the torch variants),
  ``endtoend`` (from host uint8), ``service`` (the service on the GPU against the CPU, and parity);
  ``--device cpu`` with any of them is a dry run with CPU stand-ins, named and titled as one;
* ``http``: the real service, a concurrency sweep against the bare-Starlette ceiling, batch requests, payload
  formats (native and v2), a dataset task with online latency beside it, and an open loop.

``--quick`` runs in about a minute. A GPU server with torch and onnxruntime but no BentoML runs
``--stages inprocess ceilings variants endtoend``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmark.device import STAGES, run_device_stages
from benchmark.harness import FULL, QUICK, RESULTS, machine_name, model_dirs
from benchmark.inprocess import flops_per_image, run_inprocess
from benchmark.report import write_report
from fashion.backends import BACKENDS
from fashion.data import load_fashion_mnist
from fashion.env import environment_stamp
from fashion.manifest import read_manifest

ALL_STAGES = ("inprocess", *STAGES, "http")


def gpu_name() -> str | None:
    """The CUDA device's name, if torch sees one."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def conclusions(results: dict[str, Any]) -> list[str]:
    """Two or three sentences drawn from the numbers (none without the in-process part)."""
    inproc = results.get("inprocess")
    if not inproc:
        return []
    at_1024 = [r for r in inproc["sweep"] if r["batch"] == 1024]
    fp32 = max((r for r in at_1024 if r["backend"] != "onnx-int8"), key=lambda r: r["images_per_s"])
    one = min((r for r in inproc["sweep"] if r["batch"] == 1), key=lambda r: r["median_s"])
    text = [
        f"In-process, the fastest float32 backend at batch 1,024 is {fp32['backend']} "
        f"({fp32['images_per_s']:,.0f} images/s, {fp32['fraction_of_ceiling']:.2f} of the float32 matmul ceiling); "
        f"the fastest at batch 1 is {one['backend']} ({one['median_s'] * 1e6:.0f} µs per call)."
    ]
    int8 = next((r for r in at_1024 if r["backend"] == "onnx-int8"), None)
    if int8:
        share = int8["fraction_of_ceiling"]
        relation = "above" if share > 1 else "within"
        text[0] += (f" The int8 model does {int8['images_per_s']:,.0f} images/s at batch 1,024, {share:.2f} of the "
                    f"float32 ceiling ({relation} it).")
    check = inproc["correctness"]
    accuracy, agreement = check["accuracy"], check["agreement"]
    source = {name: BACKENDS[name].model for name in accuracy if name in BACKENDS}
    same = [agreement[a][b] for a in source for b in source if a < b and source[a] == source[b]
            and "int8" not in a + b]
    cross = [agreement[a][b] for a in source for b in source if source[a] != source[b] and "int8" not in a + b]
    sentence = (f"Test accuracy ranges from {min(accuracy.values()):.4f} to {max(accuracy.values()):.4f}. "
                f"Backends of the same exported model agree on at least {min(same):.2%} of the test images"
                if same else f"Test accuracy ranges from {min(accuracy.values()):.4f} to {max(accuracy.values()):.4f}")
    if cross:
        sentence += f"; the PyTorch- and TensorFlow-trained models agree on {min(cross):.2%}"
    if "onnx-int8" in agreement and "onnx-torch" in agreement:
        sentence += f"; int8 agrees with its float32 source on {agreement['onnx-int8']['onnx-torch']:.2%}"
    text.append(sentence + ".")
    http = results.get("http")
    if http:
        top = max(r["concurrency"] for r in http["rows"])
        bare = next(r for r in http["rows"] if r["target"] == "bare-starlette" and r["concurrency"] == top)
        best = max((r for r in http["rows"] if r["kind"] == "single" and r["concurrency"] == top
                    and r["target"] != "bare-starlette"), key=lambda r: r["rps"])
        batch = max((r for r in http["rows"] if r["kind"] == "batch"), key=lambda r: r["images_per_s"])
        change = "lifts" if batch["images_per_s"] > best["rps"] else "does not lift"
        text.append(
            f"Over HTTP with {top} clients and one image per request, {best['target']} serves {best['rps']:,.0f} "
            f"req/s ({best['rps'] / bare['rps']:.2f} of the bare Starlette app); sending {http['batch_images']} "
            f"images per request as .npy {change} throughput: {batch['images_per_s']:,.0f} images/s at best "
            f"({batch['target']})."
        )
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short timings, one backend over HTTP (< 1 min)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto (default): cuda if torch sees one; with cpu the GPU stages are a dry run")
    parser.add_argument("--stages", nargs="+", choices=ALL_STAGES, default=None,
                        help="default: inprocess and http, and on cuda every GPU stage too")
    parser.add_argument("--models", type=Path, default=None,
                        help="folder of exported models (<model>/<version>/, e.g. a BentoML store's models folder); "
                             "default: the BentoML store")
    parser.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST folder (default: found)")
    parser.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), default=None,
                        help="backends over HTTP (default: all; --quick: onnx-torch)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the report")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only rebuild the report (Markdown, plots) from a benchmark JSON file")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        print(f"report: {write_report(results, args.out, conclusions(results))}")
        return 0
    start = time.perf_counter()
    gpu = gpu_name()
    device = ("cuda" if gpu else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not gpu:
        print("error: torch sees no CUDA device here; --device cpu runs the GPU stages as a dry run", file=sys.stderr)
        return 2
    stages = args.stages or ["inprocess", *(STAGES if device == "cuda" else ()), "http"]
    data = load_fashion_mnist(args.data_dir)
    dirs = model_dirs(args.models)
    layer_sizes = read_manifest(dirs[BACKENDS["torch"].model])["architecture"]["layer_sizes"]
    budget = QUICK if args.quick else FULL
    environment = environment_stamp()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick, "gpu": gpu, "device": device,
        "command": "python -m benchmark " + shlex.join(argv), "environment": environment,
        "machine": machine_name(environment, gpu), "flops_per_image": flops_per_image(layer_sizes),
    }
    if "inprocess" in stages:
        print(f"in-process on {device}", flush=True)
        results["inprocess"] = run_inprocess(dirs, data.test_images, data.test_labels, device, budget,
                                             512 if args.quick else 2048)
    if gpu_stages := [s for s in stages if s in STAGES]:
        models = args.models.resolve() if args.models else None  # the service's home links to them: absolute
        results["stages"] = run_device_stages(gpu_stages, device, dirs, models, data.test_images, data.test_labels)
    if "http" in stages:
        from benchmark.http import HttpPlan, run_http

        backends = tuple(args.backends or (["onnx-torch"] if args.quick else list(BACKENDS)))
        plan = HttpPlan(backends=backends, concurrency=(1, 16) if args.quick else (1, 4, 16, 64),
                        seconds=1 if args.quick else 5, warmup=1, open_loop_seconds=2 if args.quick else 10,
                        task_images=10_000 if args.quick else 60_000)
        results["http"] = run_http(data.test_images, plan)
    results["seconds"] = time.perf_counter() - start
    path = write_report(results, args.out, conclusions(results))
    print(f"report: {path} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
