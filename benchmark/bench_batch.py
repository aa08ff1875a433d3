"""Throughput of the batch CLI: ``python -m benchmark.bench_batch``.

Starts the real service (unless ``--url`` is given) and times three jobs through
the same code as ``python -m clients batch``: the 10,000 test images from IDX
via the service, a folder of 10,000 PNG files via the service, and the IDX file
with ``--local`` (ONNX Runtime in-process). Prints images/s for each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from clients.__main__ import local_classifier, remote_classifier
from clients.batch import JobConfig, run_job
from clients.sources import open_source
from fashion.data import IDX_FILES, find_data_dir, idx_file_path, load_fashion_mnist
from fashion.imaging import encode_png
from service import launch


def write_png_folder(folder: Path, count: int) -> None:
    """The first ``count`` test images as PNG files, one folder per class."""
    from fashion.contract import CLASS_NAMES

    data = load_fashion_mnist()
    for i in range(count):
        label = CLASS_NAMES[data.test_labels[i]].replace("/", "-")
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{i:05d}.png").write_bytes(encode_png(data.test_images[i]))


def time_job(source: str, out: Path, args: argparse.Namespace, local: bool, backend: str | None = None) -> float:
    """Median images/s of ``repeats`` runs of one job (after one unmeasured warm-up run)."""
    rates = []
    for _ in range(args.repeats + 1):
        items, total = open_source(source)
        job_args = argparse.Namespace(url=args.url, timeout=60.0, retries=5, concurrency=args.concurrency,
                                      backend=backend, model=None)
        classify, retried = local_classifier(job_args) if local else remote_classifier(job_args)
        batch_size = args.local_batch_size if local else args.batch_size
        config = JobConfig(batch_size=batch_size, concurrency=args.concurrency, progress=False)
        summary = asyncio.run(run_job(items, total, out, classify, config, retried))
        assert summary.failed == 0 and summary.ok == summary.total
        rates.append(summary.images_per_second)
    rates = rates[1:]
    print(f"  runs: {', '.join(f'{r:,.0f}' for r in rates)} images/s; median {statistics.median(rates):,.0f}")
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench_batch", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default=None, help="use this running service instead of starting one")
    parser.add_argument("--batch-size", type=int, default=1024, help="images per request (the service takes 1,024)")
    parser.add_argument("--local-batch-size", type=int, default=2048, help="images per model call with --local")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per job (after one warm-up)")
    parser.add_argument("--images", type=int, default=10000, help="PNG files in the folder job")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fashion-bench-batch-"))
    server = None
    if args.url is None:
        server = launch.start(work)
        args.url = server.url
        server.wait_ready()
    try:
        idx = str(idx_file_path(find_data_dir(), IDX_FILES["test_images"]))
        write_png_folder(work / "pngs", args.images)
        results = {}
        print("IDX (10,000 test images) through the service")
        results["idx-service"] = time_job(idx, work / "idx.csv", args, local=False)
        print(f"folder of {args.images:,} PNG files through the service")
        results["png-folder-service"] = time_job(str(work / "pngs"), work / "png.csv", args, local=False)
        print("IDX with --local (ONNX Runtime in this process, fp32 model)")
        results["idx-local"] = time_job(idx, work / "local.csv", args, local=True)
        print("IDX with --local --backend onnx-int8 (int8 model, VNNI)")
        results["idx-local-int8"] = time_job(idx, work / "local8.csv", args, local=True, backend="onnx-int8")
    finally:
        if server is not None:
            server.stop()
    print("\nmedian images/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
