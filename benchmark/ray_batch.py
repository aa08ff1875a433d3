"""Batch throughput on Ray Data against ``--local``: ``python -m benchmark.ray_batch``.

The same images (the test set tiled to ``--images``) are classified, in each repeat and
in this order on the same machine, by:

* **local**: ``python -m clients batch big.npy --local`` as its own process (the images
  as one ``.npy``);
* **ray**: ``python -m clients batch shards/ --engine ray`` as its own process, which
  starts a Ray instance on this machine (every core, one single-threaded model actor a
  core) over the same images cut into ``--shards`` ``.npy`` files.

Both write CSV. The in-job rate is what each job prints (for Ray, from the cluster being
ready to the output in place); the process wall time includes start-up (Ray's own too).
The machine may be shared: the ratio of the two, run back to back, is the figure to read.
Writes ``results/ray-batch-<machine>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.batch import make_input, onnx_model_dir, run_cli
from benchmark.harness import RESULTS, machine_name, write_results
from fashion.env import environment_stamp

MODES = ("local", "ray")


@dataclass(frozen=True)
class RayBenchConfig:
    """What to measure (see ``--help``)."""

    images: int = 1_000_000
    shards: int = 10
    repeats: int = 3
    batch_size: int = 1024
    model: str | None = None
    work: Path | None = None
    out: Path = RESULTS


def make_shards(source: Path, folder: Path, shards: int) -> Path:
    """``source`` cut into ``shards`` .npy files of consecutive rows, in a folder of ``folder`` (kept between runs)."""
    pixels = np.load(source, mmap_mode="r")
    target = folder / f"shards-{len(pixels)}-{shards}"
    if target.is_dir():
        return target
    building = folder / f".{target.name}.tmp"
    building.mkdir(parents=True, exist_ok=True)
    for k, rows in enumerate(np.array_split(np.arange(len(pixels)), shards)):
        np.save(building / f"part-{k:03d}.npy", np.ascontiguousarray(pixels[rows[0]:rows[-1] + 1]))
    os.replace(building, target)
    return target


def run_mode(mode: str, big: Path, shards: Path, model_dir: Path, work: Path, config: RayBenchConfig) -> dict:
    """One CLI process of ``mode`` (its wall time, in-job rate and CPU, peak RSS of the driver)."""
    common = ["--model", str(model_dir), "--quiet", "--batch-size", str(config.batch_size)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if mode == "local":
        return run_cli(["batch", str(big), "--out", str(work / "local.csv"), "--local", *common], env, work)
    return run_cli(["batch", str(shards), "--out", str(work / "ray.csv"), "--engine", "ray", *common], env, work)


def measure(config: RayBenchConfig, big: Path, shards: Path, model_dir: Path, work: Path) -> list[dict[str, Any]]:
    """Each repeat runs both modes back to back; the ratio compares runs that shared the same moment's load."""
    repeats = []
    for repeat in range(config.repeats):
        row: dict[str, Any] = {"repeat": repeat + 1}
        for mode in MODES:
            row[mode] = run_mode(mode, big, shards, model_dir, work, config)
            print(f"repeat {repeat + 1} {mode}: {row[mode]['rate']:,.0f} images/s in the job, process "
                  f"{row[mode]['wall_s']:.1f} s", flush=True)
        row["ratio"] = row["ray"]["rate"] / row["local"]["rate"]
        row["wall_ratio"] = row["local"]["wall_s"] / row["ray"]["wall_s"]
        repeats.append(row)
    return repeats


def summarize(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats."""
    summary: dict[str, Any] = {mode: {key: statistics.median(r[mode][key] for r in repeats)
                                      for key in ("rate", "wall_s", "cpu_s", "peak_rss_mib")} for mode in MODES}
    summary["ratio"] = statistics.median(r["ratio"] for r in repeats)
    summary["wall_ratio"] = statistics.median(r["wall_ratio"] for r in repeats)
    return summary


def write_report(config: RayBenchConfig, results: dict[str, Any], stem: str) -> Path:
    """``<stem>.md`` (the table) and ``<stem>.json`` (every run) under ``config.out``."""
    summary, env = results["summary"], results["environment"]
    lines = [f"# Batch on Ray Data against `--local`: {config.images:,} images, median of {config.repeats} repeats",
             "", f"{env['cpu']}, {env['cores']} cores; {results['date']}; `nice -n 10 python -m benchmark.ray_batch "
             f"--images {config.images} --shards {config.shards}`. The machine was shared with other jobs: read the "
             "ratio of two runs made back to back, not the absolute rates.", "",
             "| path | input | in-job images/s | process wall s | in-job CPU s | driver peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    inputs = {"local": "one .npy", "ray": f"{config.shards} .npy shards"}
    for mode in MODES:
        s = summary[mode]
        lines.append(f"| {mode} | {inputs[mode]} | {s['rate']:,.0f} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} "
                     f"| {s['peak_rss_mib']:,.0f} |")
    lines += ["", f"Ray over `--local`, in-job rate: **{summary['ratio']:.2f}**; process wall (local over ray): "
              f"**{summary['wall_ratio']:.2f}**.", "", "Runs:", ""]
    for row in results["repeats"]:
        lines.append(f"- repeat {row['repeat']}: local {row['local']['rate']:,.0f} images/s "
                     f"({row['local']['wall_s']:.1f} s), ray {row['ray']['rate']:,.0f} images/s "
                     f"({row['ray']['wall_s']:.1f} s), ratio {row['ratio']:.2f}")
    lines += ["", "In-job rate: images over the job's own time as the CLI prints it (for Ray, from the cluster "
              "being ready to the output in place: Ray's start-up is in the process wall time only). In-job CPU: "
              "the driver's and, for Ray, the workers' while they ran shards; Ray's own daemons are not counted. "
              "Peak RSS: the driver process only (`VmHWM`). Ray runs one actor a core, each with a one-thread "
              "model; `--local` runs one model call at a time on a model using every core."]
    return write_results(stem, "\n".join(lines), results, config.out)


def parse_args(argv: list[str] | None) -> RayBenchConfig:
    parser = argparse.ArgumentParser(prog="python -m benchmark.ray_batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000, help="images per job (default 1,000,000)")
    parser.add_argument("--shards", type=int, default=10, help="array files the Ray job reads (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the report gives medians (default 3)")
    parser.add_argument("--batch-size", type=int, default=1024, help="images per model call (default 1024)")
    parser.add_argument("--model", default=None, help="exported model folder or BentoML tag (default: latest)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the inputs and outputs (default: a temp)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes (default results/)")
    args = parser.parse_args(argv)
    return RayBenchConfig(images=args.images, shards=args.shards, repeats=args.repeats, batch_size=args.batch_size,
                          model=args.model, work=args.work, out=args.out)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    work = config.work or Path(tempfile.mkdtemp(prefix="fashion-bench-ray-"))
    work.mkdir(parents=True, exist_ok=True)
    big = make_input(work, config.images)
    shards, model_dir = make_shards(big, work, config.shards), onnx_model_dir(config.model)
    repeats = measure(config, big, shards, model_dir, work)
    env = environment_stamp()
    results = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "environment": env,
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
               "repeats": repeats, "summary": summarize(repeats)}
    path = write_report(config, results, f"ray-batch-{machine_name(env, None)}")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
