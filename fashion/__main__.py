"""Data commands: ``python -m fashion ensure-data`` and ``python -m fashion bench-load``."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from fashion.data import DataError, find_data_dir, load_fashion_mnist


def ensure_data(data_dir: str | None, download: bool = True) -> int:
    """Find (or download) and verify the dataset; print where it is."""
    try:
        directory = find_data_dir(data_dir, download=download)
        data = load_fashion_mnist(directory)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Fashion-MNIST verified in {directory}: "
        f"{len(data.train_images)} training and {len(data.test_images)} test images"
    )
    return 0


def bench_load(data_dir: str | None, repeats: int, out: Path) -> int:
    """Time loading and verifying all 70,000 images, print it and write it to ``out``; the first call warms
    the page cache."""
    directory = find_data_dir(data_dir)
    load_fashion_mnist(directory)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_fashion_mnist(directory)
        times.append(time.perf_counter() - start)
    line = (f"load + verify 70,000 images from {directory}: median {statistics.median(times) * 1000:.0f} ms, "
            f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {repeats} warm runs "
            f"(`python -m fashion bench-load --repeats {repeats}`; the machine may have been shared)")
    print(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fashion", description=__doc__)
    parser.add_argument("command", choices=["ensure-data", "bench-load"])
    parser.add_argument("--data-dir", default=None, help="folder with the four IDX files (default: search)")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    parser.add_argument("--repeats", type=int, default=5, help="warm runs for bench-load (default: 5)")
    parser.add_argument("--out", type=Path, default=Path("results/data-load.txt"),
                        help="where bench-load writes its line (default: results/data-load.txt)")
    args = parser.parse_args(argv)
    if args.command == "ensure-data":
        return ensure_data(args.data_dir, download=not args.no_download)
    return bench_load(args.data_dir, args.repeats, args.out)


if __name__ == "__main__":
    sys.exit(main())
