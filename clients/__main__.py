"""Command line for the service: ``python -m clients classify IMAGE...``, ``python -m clients batch INPUT`` and
``python -m clients models list|load|promote|rollback|unload`` (clients.models).

Exit codes of ``batch``: 0 every input classified; 1 finished, but some inputs
failed (see the error report); 2 the job failed (service unreachable, too many
errors, bad arguments) and wrote no output file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx

from clients.batch import EXIT_FAILED, JobConfig, JobError, Stages, answers_from_records, run_job
from clients.client import API_KEY_ENV, FashionClient, RetryPolicy, ServiceError
from clients.formats import FORMATS
from clients.models import add_parser as add_models_parser
from clients.models import run as run_models
from clients.sources import SourceError, open_source
from fashion.backends import BACKENDS

DEFAULT_URL = "http://localhost:3000"


def cmd_classify(args: argparse.Namespace) -> int:
    """Label and confidence per image, as a table or JSON."""
    rows = []
    with FashionClient(args.url, timeout=args.timeout, api_key=args.api_key) as client:
        for image in args.images:
            try:
                prediction = client.classify(Path(image), args.backend)
                rows.append({"image": image, "label": prediction.label, "confidence": prediction.confidence,
                             "backend": prediction.backend, "model_version": prediction.model_version})
            except (ServiceError, OSError) as exc:
                rows.append({"image": image, "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["image"]) for r in rows)
        for r in rows:
            result = f"{r['label']:<12} {r['confidence']:.3f}" if "label" in r else f"error: {r['error']}"
            print(f"{r['image']:<{width}}  {result}")
    return 0 if all("label" in r for r in rows) else 1


def wait_until_ready(url: str, timeout: float) -> None:
    """Wait up to ``timeout`` s for ``/readyz`` while the server is busy or starting; fail at once if none listens.

    A server under heavy load may take seconds to answer a new connection: that is
    no reason to give up a job the retries would carry through.
    """
    deadline = time.monotonic() + timeout
    with FashionClient(url, timeout=min(timeout, 10.0)) as client:
        while True:
            try:
                if client.http.get("/readyz").status_code == 200:
                    return
            except httpx.ConnectError:
                raise JobError(f"the service at {url} is not reachable (start it with `make serve`)") from None
            except httpx.TransportError:
                pass  # slow to answer: busy, keep waiting
            if time.monotonic() > deadline:
                raise JobError(f"the service at {url} did not become ready within {timeout:g} s")
            time.sleep(0.5)


def remote_classifier(args: argparse.Namespace):
    """A classify function over HTTP (compact answers; safe to call from several threads), once the service is
    ready; and a function counting the retries made."""
    client = FashionClient(args.url, timeout=args.timeout, retry=RetryPolicy(attempts=args.retries),
                           max_connections=args.concurrency, api_key=args.api_key)
    wait_until_ready(args.url, args.timeout)

    def classify(pixels):
        # A JSON answer (an older service, a proxy dropping Accept) still carries what the job writes.
        answer = client.classify_array_records(pixels, args.backend, allow_json=True)
        return answers_from_records(answer.records, answer.backend, answer.model_version)

    return classify, lambda: client.retry.retried


def local_classifier(args: argparse.Namespace, threads: int):
    """The same job without a server: the ONNX model in this process, ``threads`` threads a call."""
    from clients.local import LocalClassifier

    model = LocalClassifier.open(args.model, args.backend, threads=threads)

    def answer(logits):
        return answers_from_records(model.records_of(logits), model.backend, model.version)

    # LocalClassifier.records, split over the job's threads (clients.batch.Stages): the scaling and the model in the
    # model's thread (LocalClassifier.logits says why), the softmax in the writing thread.
    return Stages(infer=model.logits, answer=answer), lambda: 0


def ray_job(args: argparse.Namespace, config: JobConfig):
    """The job on Ray Data (clients/ray_engine.py): the inputs' shards over a pool of Ray actors."""
    from clients.ray_engine import RayConfig, run_ray_job

    ray = RayConfig(address=args.ray_address, workers=args.ray_workers, shard_size=args.shard_size)
    return run_ray_job(args.input, args.out, args.model, args.backend, config, ray)


def cmd_batch(args: argparse.Namespace) -> int:
    out = args.out
    try:
        max_errors = 0 if args.fail_fast else args.max_errors
        # --local: one single-threaded model call per core unless asked otherwise (clients.local.plan_local).
        from clients.local import plan_local

        plan = plan_local(args.backend, args.concurrency) if args.local else None
        concurrency = plan.calls if plan else args.concurrency or 4
        config = JobConfig(batch_size=args.batch_size, concurrency=concurrency, max_errors=max_errors,
                           resume=args.resume, progress=not args.quiet)
        if args.engine == "ray":
            summary = ray_job(args, config)
        else:
            source = open_source(args.input[0], args.labels)
            classify, retried = local_classifier(args, plan.threads) if plan else remote_classifier(args)
            summary = run_job(source, out, classify, config, retried)
    except (JobError, SourceError, ServiceError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{out}: {summary.line()}")
    if summary.failed:
        print(f"errors listed in {out.with_name(out.stem + '.errors.csv')}")
    if summary.confusion is not None:
        from fashion.plots import plot_confusion_matrix

        png = out.with_name(out.stem + ".confusion.png")
        plot_confusion_matrix(summary.confusion, png, f"{' '.join(args.input)}: accuracy {summary.accuracy:.4f}")
        print(f"confusion matrix: {png}")
    return summary.exit_code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service address (default {DEFAULT_URL})")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"the service's API key, if it has keys (default: ${API_KEY_ENV}, else none); "
                             "prefer the variable: a command line is visible to other users")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default=None, help="default: the service's fastest")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("classify", help="classify image files")
    one.add_argument("images", nargs="+")
    one.add_argument("--json", action="store_true", help="JSON instead of a table")
    many = commands.add_parser("batch", help="classify a folder, glob, IDX file or .npy/.npz array",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    many.add_argument("input", nargs="+",
                      help="folder (recursive), glob, IDX images file, .npy or .npz; with --engine ray, several")
    many.add_argument("--out", type=Path, required=True,
                      help="output file: .csv, .jsonl or .parquet (Parquet needs pip install 'fashion-serve[parquet]')")
    many.add_argument("--labels", type=Path, default=None, help="IDX labels file (default: found beside the images)")
    many.add_argument("--batch-size", type=int, default=1024,
                      help="images per request (the service accepts up to 1,024); with --local, per model call")
    many.add_argument("--concurrency", type=int, default=None,
                      help="chunks classified at once (default: 4 requests in flight; with --local, one "
                           "single-threaded model call per core)")
    many.add_argument("--retries", type=int, default=5,
                      help="attempts per request on 429/502/503/504/connection errors")
    many.add_argument("--max-errors", type=int, default=None, help="stop after this many bad inputs (default: never)")
    many.add_argument("--fail-fast", action="store_true", help="stop at the first bad input")
    many.add_argument("--resume", action="store_true", help="finish an interrupted job from its journal")
    many.add_argument("--local", action="store_true", help="run the ONNX model in this process, no server")
    many.add_argument("--model", default=None, help="with --local: exported model folder or BentoML tag")
    many.add_argument("--quiet", action="store_true", help="no progress bar")
    many.add_argument("--engine", choices=["threads", "ray"], default="threads",
                      help="threads: this process (through the service, or --local); ray: the model in the actors of "
                           "a Ray cluster, one shard per task (pip install 'fashion-serve[ray]'; docs/batch.md)")
    many.add_argument("--ray-address", default=None,
                      help="with --engine ray: 'auto' (the cluster `ray start` runs here), ray://head:10001, "
                           "or none to start Ray for this job")
    many.add_argument("--ray-workers", type=int, default=None, help="with --engine ray: actors (default: one a CPU)")
    many.add_argument("--shard-size", type=int, default=8192,
                      help="with --engine ray: image files per shard (each array file is one shard)")
    add_models_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "batch" and args.out.suffix not in FORMATS:
        parser.error(f"--out must end in {', '.join(FORMATS)}")
    if args.command == "batch" and args.engine == "threads" and len(args.input) > 1:
        parser.error("several inputs need --engine ray (the threads engine reads one folder, glob or file)")
    if args.command == "batch" and args.engine == "ray" and args.labels is not None:
        parser.error("--labels does not apply to --engine ray: each IDX shard's labels are found beside it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "models":
        return run_models(args)
    return cmd_classify(args) if args.command == "classify" else cmd_batch(args)


if __name__ == "__main__":
    sys.exit(main())
