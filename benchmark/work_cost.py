"""What the work around the model costs per image, in process: ``python -m benchmark.work_cost ood|upload``.

* ``ood``: the "not clothing" score (:meth:`fashion.ood.OodDetector.score`), computed once per batch in the model's
  thread (service.registry.ModelRegistry.run_batch), beside the ONNX Runtime model call of the same real test images,
  at each batch size; the budget is :data:`TARGET_US` per image in a batch. Writes
  ``results/ood-cost-<machine>.{md,json}``.
* ``upload``: a ``/classify`` request with one 28 x 28 grayscale PNG, stage by stage, before and after in one run:
  the multipart form parsed by Starlette (``Request.form``, spooled upload files, then ``read``) against
  ``service.inputs.split_form``, and the PNG decoded through the full path (the early exit turned off) against
  ``fashion.imaging.decode_image`` as served. Writes ``results/upload-cost-<machine>.{md,json}``.

Medians of repeated calls (benchmark.harness.time_calls); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from benchmark.harness import FULL, QUICK, RESULTS, Budget, machine_name, multipart_body, time_calls, write_results
from fashion.env import environment_stamp

BATCH_SIZES = (1, 4, 16, 64, 256, 1024)
TARGET_US = 5.0  # the score's budget per image in a batch (docs/serving.md)
BOUNDARY = "workcostboundary"


def thread_seconds(fn: Callable[[], object], calls: int) -> float:
    """The median CPU time of this thread per call of ``fn`` over ``calls`` calls.

    What a call costs whatever else the machine runs: on a busy machine a call that outlasts its time slice waits
    for the CPU, and its wall time grows with the load while its CPU time does not. Valid for work that runs in the
    calling thread alone (the score; the model with one thread).
    """
    samples = []
    for _ in range(calls):
        start = time.thread_time()
        fn()
        samples.append(time.thread_time() - start)
    return statistics.median(samples)


def run_model(predictor: Any, pixels: np.ndarray) -> np.ndarray:
    """The model call as the service makes it: scale the pixels, then the backend."""
    from fashion.contract import preprocess

    return predictor.predict(preprocess(pixels))


def measure_ood(classifier: Any, images: np.ndarray, budget: Budget) -> list[dict]:
    """Per batch size: median seconds per call of the score and of the model (wall and this thread's CPU time),
    and the CPU time per image."""
    rows = []
    for size in BATCH_SIZES:
        pixels = images[:size]
        logits = run_model(classifier.predictor, pixels)
        score_call = functools.partial(classifier.detector.score, logits, pixels)
        model_call = functools.partial(run_model, classifier.predictor, pixels)
        score, model = time_calls(score_call, budget), time_calls(model_call, budget)
        calls = max(budget.min_calls, min(score["calls"], model["calls"]))
        score_cpu, model_cpu = thread_seconds(score_call, calls), thread_seconds(model_call, calls)
        rows.append({"batch": size, "score_s": score["median_s"], "score_iqr_s": score["iqr_s"],
                     "model_s": model["median_s"], "score_cpu_s": score_cpu, "model_cpu_s": model_cpu,
                     "score_us_per_image": 1e6 * score_cpu / size, "model_us_per_image": 1e6 * model_cpu / size})
    return rows


def render_ood(report: dict) -> str:
    """The Markdown report of ``ood``."""
    env = report["environment"]
    lines = ["# The \"not clothing\" score's cost per image, in process", "",
             f"Written by `python -m benchmark.work_cost {shlex.join(report['argv'])}` on {env['cpu']} "
             f"({env['cores']} cores); model {report['model']}, model threads 1, real test images, medians of "
             f"repeated calls. The score is computed once per batch in the model's thread; budget: {TARGET_US:g} µs "
             "per image in a batch. Per image: the calling thread's CPU time (both run in that thread alone), "
             f"which the machine's other work does not inflate; per call: CPU and wall time. {report['note']}", "",
             "| batch | score µs/image | model µs/image | score / model | score µs/call, CPU (wall) | "
             "model µs/call, CPU (wall) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['batch']} | {r['score_us_per_image']:.2f} | {r['model_us_per_image']:.2f} | "
              f"{r['score_cpu_s'] / r['model_cpu_s']:.2f} | {1e6 * r['score_cpu_s']:.1f} ({1e6 * r['score_s']:.1f}) | "
              f"{1e6 * r['model_cpu_s']:.1f} ({1e6 * r['model_s']:.1f}) |" for r in report["rows"]]
    return "\n".join(lines) + "\n"


def run_ood(args: argparse.Namespace, budget: Budget) -> dict:
    """The score and the model at each batch size, on the store's latest onnx-torch model (or ``--model``)."""
    from clients.local import LocalClassifier
    from fashion.data import find_data_dir, load_fashion_mnist

    classifier = LocalClassifier.open(args.model, "onnx-torch", threads=1)
    if classifier.detector is None:
        raise SystemExit(f"model {classifier.version} was exported without a detector; re-export it")
    images = load_fashion_mnist(find_data_dir(download=False)).test_images
    return {"model": f"onnx-torch {classifier.version}", "rows": measure_ood(classifier, images, budget)}


def completed(coroutine: Coroutine) -> Any:
    """The result of a coroutine that never waits (an in-memory body): run to its end without an event loop, so
    the timing holds the work alone."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine waited; it cannot be timed without an event loop")


async def starlette_form(body: bytes, content_type: str) -> list[bytes]:
    """The files of the ``images`` field as Starlette parses a form: spooled upload files, then ``read``."""
    from starlette.requests import Request

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/classify", "query_string": b"",
             "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]}
    form = await Request(scope, receive).form(max_files=1025, max_fields=16)
    return [await upload.read() for upload in form.getlist("images")]


async def split_form(body: bytes, content_type: str) -> list[bytes]:
    """The files of the ``images`` field as the service splits the form (service.inputs.split_form)."""
    from service.inputs import split_form as split

    return [part.data for part in split(body, content_type, 1024, 16) if part.name == "images"]


@contextlib.contextmanager
def full_path() -> Iterator[None]:
    """``decode_image`` with the early exit for dataset-format PNGs turned off (the decoding before it existed)."""
    from fashion import imaging

    with mock.patch.object(imaging, "already_framed", lambda image, invert=None: None):
        yield


def run_upload(args: argparse.Namespace, budget: Budget) -> dict:
    """Each stage before and after, on the first bundled sample (a 28 x 28 grayscale PNG); the two decodings are
    checked to give the same pixels first."""
    from fashion.imaging import decode_image
    from fashion.samples import sample_paths

    png = sample_paths()[0].read_bytes()
    body, content_type = multipart_body(png, BOUNDARY), f"multipart/form-data; boundary={BOUNDARY}"
    with full_path():
        before = decode_image(png)
    if not np.array_equal(before, decode_image(png)):
        raise SystemExit("the early exit changed the pixels")
    stages: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "form parsing": (lambda: completed(starlette_form(body, content_type)),
                         lambda: completed(split_form(body, content_type))),
        "decoding": (lambda: decode_image(png), lambda: decode_image(png)),
        "both": (lambda: decode_image(completed(starlette_form(body, content_type))[0]),
                 lambda: decode_image(completed(split_form(body, content_type))[0])),
    }
    rows = []
    for stage, (before, after) in stages.items():
        with full_path():  # the patch is set once for the whole timing, not per call
            old = time_calls(before, budget)
        new = time_calls(after, budget)
        rows.append({"stage": stage, "before_s": old["median_s"], "after_s": new["median_s"],
                     "before_iqr_s": old["iqr_s"], "after_iqr_s": new["iqr_s"]})
    return {"image": f"{sample_paths()[0].name} ({len(png)} bytes PNG, body {len(body)} bytes)", "rows": rows}


def render_upload(report: dict) -> str:
    """The Markdown report of ``upload``."""
    env = report["environment"]
    lines = ["# A /classify upload of one 28 x 28 PNG, before and after, in process", "",
             f"Written by `python -m benchmark.work_cost {shlex.join(report['argv'])}` on {env['cpu']} "
             f"({env['cores']} cores); image {report['image']}; medians of repeated calls, both ways in one run. "
             "Before: Starlette's `Request.form` (spooled upload files, then `read`) and the full decoding path; "
             "after: `service.inputs.split_form` and `decode_image` with its early exit for the dataset's format. "
             f"{report['note']}",
             "", "| stage | before µs | after µs | after / before |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['stage']} | {1e6 * r['before_s']:.1f} | {1e6 * r['after_s']:.1f} | "
              f"{r['after_s'] / r['before_s']:.2f} |" for r in report["rows"]]
    return "\n".join(lines) + "\n"


WHAT = {"ood": (run_ood, render_ood, "ood-cost"), "upload": (run_upload, render_upload, "upload-cost")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.work_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=sorted(WHAT), help="ood: the score per batch; upload: a /classify upload")
    parser.add_argument("--model", default=None, help="ood: exported folder or BentoML tag (default: the store's "
                                                      "latest onnx-torch model)")
    parser.add_argument("--quick", action="store_true", help="short timing budget (a smoke run)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. that the machine was busy")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"folder for the report (default: {RESULTS})")
    args = parser.parse_args(argv)
    run, render, stem = WHAT[args.what]
    env = environment_stamp()
    report = {"environment": env, "argv": list(argv if argv is not None else sys.argv[1:]), "note": args.note,
              **run(args, QUICK if args.quick else FULL)}
    path = write_results(f"{stem}-{machine_name(env)}", render(report), report, args.out)
    print(render(report), f"wrote {path}", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
