"""Sustained batch throughput as a fraction of bare ONNX Runtime: ``python -m benchmark.batch`` (``make bench-batch``).

On one input of at least a million images (the test set tiled, saved as ``.npy``),
each repeat measures, in this order on the same machine:

* **bare**: ``session.run`` of the same ONNX model at batch 1,024 on ready float32
  input (ONNX Runtime's default session options), the ceiling;
* **local**: ``python -m clients batch --local`` as its own process (wall time, its
  in-job rate, its peak RSS);
* **local-one-call**: the same with ``--concurrency 1``, one model call over every core
  (the default before ``clients.local.plan_local``), to show what the default gains;
* **service**: ``python -m clients batch`` through a real ``bentoml serve`` (compact
  ``application/x-npy`` answers);
* **tasks**: the same images as dataset tasks (``/classify_dataset``) of at most
  100,000 images each, two in flight, compact results, from the first upload to the
  last result;
* **ray** (only when named in ``--modes``; needs the ``ray`` extra): ``python -m clients batch
  shards/ --engine ray`` as its own process, which starts a Ray instance on this machine (one
  single-threaded model actor a core) over the same images cut into ``--shards`` ``.npy`` files.
  Its in-job rate runs from the cluster being ready to the output in place; Ray's start-up is in
  its process wall time only.

Then, once per output format (CSV and Parquet), the **resume check**: a ``--local`` job
over the same input is killed with SIGKILL at a random moment, resumed with
``--resume``, and its output compared byte for byte with an uninterrupted run's.

The machine may be shared: each run is compared with bare rates measured just before
and after it, and the report gives the median of the repeats. Writes ``results/batch-bench-<machine>.md``
and ``.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.harness import REPO, RESULTS, launch, machine_name, write_results
from fashion.env import environment_stamp

TARGETS = {"local": 0.90, "service": 0.60, "tasks": 0.50}
# The paths measured; "local-one-call" is --local with --concurrency 1 (one model call over every core, the
# default before clients.local.plan_local), kept beside the default to show what the plan gains. No target.
MODES = ("local", "local-one-call", "service", "tasks", "ray")
DEFAULT_MODES = MODES[:-1]
TASK_IMAGES = 100_000


@dataclass(frozen=True)
class BenchConfig:
    """What to measure (see ``--help``)."""

    images: int = 1_000_000
    repeats: int = 5  # the bare rate moves by a fifth between two measurements here: five steady the median
    batch_size: int = 1024
    modes: tuple[str, ...] = DEFAULT_MODES
    shards: int = 10
    url: str | None = None
    model: str | None = None
    work: Path | None = None
    out: Path = RESULTS
    task_concurrency: int = 2
    bare_images: int = 200_000
    resume_formats: tuple[str, ...] = (".csv", ".parquet")
    seed: int | None = None


def make_input(folder: Path, images: int) -> Path:
    """The test set tiled to ``images`` rows, as ``.npy`` (kept between runs)."""
    from fashion.data import load_fashion_mnist

    path = folder / f"fashion-{images}.npy"
    if path.exists() and path.stat().st_size == 128 + images * 784:
        return path
    test = load_fashion_mnist().test_images
    tiled = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(images, 28, 28))
    for start in range(0, images, len(test)):
        stop = min(images, start + len(test))
        tiled[start:stop] = test[:stop - start]
    tiled.flush()
    del tiled
    return path


def make_shards(source: Path, shards: int) -> Path:
    """``source`` cut into ``shards`` .npy files of consecutive rows, in a folder beside it (kept between runs)."""
    pixels = np.load(source, mmap_mode="r")
    target = source.parent / f"shards-{len(pixels)}-{shards}"
    if not target.is_dir():
        building = source.parent / f".{target.name}.tmp"
        building.mkdir(parents=True, exist_ok=True)
        for k, rows in enumerate(np.array_split(np.arange(len(pixels)), shards)):
            np.save(building / f"part-{k:03d}.npy", np.ascontiguousarray(pixels[rows[0]:rows[-1] + 1]))
        os.replace(building, target)
    return target


def onnx_model_dir(model: str | None) -> Path:
    """The exported model folder the local job and the bare measurement use (the store's latest by default)."""
    from clients.local import model_folder

    return model_folder(model, "onnx-torch")


def run_calls(predictor: Any, inputs: np.ndarray, images: int, batch: int) -> tuple[int, float, float]:
    """Images done, wall and CPU seconds (this process, every thread) of ``predict`` over at least ``images``
    images, ``batch`` a call."""
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while done < images:
        for first in range(0, len(inputs) - batch + 1, batch):
            predictor.predict(inputs[first:first + batch])
            done += batch
    return done, time.perf_counter() - start, time.process_time() - cpu


def bare_rate(model_dir: Path, images: int, batch: int) -> dict[str, float]:
    """``session.run`` alone at ``batch`` images a call on ready float32 input.

    Returns:
        ``rate``: images/s with ONNX Runtime's default session options; ``cpu_per_image``: CPU seconds per image
        of a session whose idle threads do not spin (spinning burns CPU while the caller is between calls, which
        would make the bare figure look costlier than the work), over ``images`` images each.
    """
    from fashion.backends import load_artifact
    from fashion.contract import preprocess
    from fashion.data import load_fashion_mnist

    inputs = preprocess(load_fashion_mnist().test_images)
    default = load_artifact(model_dir, "onnx", "onnx", device="cpu")
    quiet = load_artifact(model_dir, "onnx", "onnx", device="cpu", spin=False)
    for predictor in (default, quiet):
        predictor.predict(inputs[:batch])  # warm-up
    done, wall, _ = run_calls(default, inputs, images, batch)
    quiet_done, _, cpu = run_calls(quiet, inputs, images, batch)
    return {"rate": done / wall, "cpu_per_image": cpu / quiet_done}


def cpu_of(pid: int | None) -> float:
    """CPU seconds so far of a process and its children (the service's worker); 0 without one."""
    if pid is None:
        return 0.0
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


# Runs the batch CLI, then prints the process's own peak RSS. getrusage and wait4 would not do: their peak
# counts the pages the child shared with this (large) process between fork and exec; VmHWM belongs to the
# memory the CLI itself mapped after exec.
CLI_WITH_PEAK = """
import re, sys
from clients.__main__ import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print("peak RSS kB", re.search(r"VmHWM:\\s+(\\d+)", status).group(1), flush=True)
sys.exit(code)
"""


def run_cli(args: list[str], env: dict[str, str], work: Path) -> dict[str, Any]:
    """One batch CLI process: wall seconds, the in-job rate and CPU it printed, its own peak RSS."""
    log = work / "cli.log"
    start = time.perf_counter()
    with log.open("w+b") as output:
        code = subprocess.run([sys.executable, "-c", CLI_WITH_PEAK, *args], cwd=REPO, env=env, stdout=output,
                              stderr=subprocess.STDOUT, timeout=1800).returncode
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"clients {' '.join(args)} exited {code}: {text[-2000:]}")
    rate = float(re.search(r"([\d,]+) images/s", text).group(1).replace(",", ""))
    cpu = float(re.search(r"([\d.]+) CPU-s", text).group(1))
    peak = int(re.search(r"peak RSS kB (\d+)", text).group(1)) / 1024
    return {"wall_s": wall, "rate": rate, "cpu_s": cpu, "peak_rss_mib": peak}


def local_args(source: Path, model_dir: Path, out: Path, config: BenchConfig, *extra: str) -> list[str]:
    """The batch CLI's arguments for a ``--local`` job over ``source`` into ``out`` (``extra``: more options)."""
    return ["batch", str(source), "--out", str(out), "--local", "--model", str(model_dir), "--quiet",
            "--batch-size", str(config.batch_size), *extra]


LOCAL_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def run_local(source: Path, model_dir: Path, work: Path, config: BenchConfig, *extra: str,
              name: str = "local.csv") -> dict[str, Any]:
    return run_cli(local_args(source, model_dir, work / name, config, *extra), {**os.environ, **LOCAL_ENV}, work)


def journal_done(journal: Path) -> int:
    """Inputs done according to the last complete line of a batch job's journal (0: none yet)."""
    from clients.batch import read_journal

    progress = read_journal(journal)
    return progress.done if progress else 0


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def kill_at_random(args: list[str], journal: Path, job_seconds: float, rng: random.Random) -> dict[str, Any]:
    """Start the CLI, SIGKILL it a random time into its job (after its first journal line, before its expected
    end); the kill point as the journal recorded it. Raises if the job ended before the kill."""
    with (journal.parent / "killed-cli.log").open("wb") as log:  # a file: a pipe nobody reads could stall it
        proc = subprocess.Popen([sys.executable, "-m", "clients", *args], cwd=REPO,
                                env={**os.environ, **LOCAL_ENV}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while journal_done(journal) == 0:  # the job has read, classified and written its first chunk
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"waited for the first line of {journal}: the job "
                                   + (f"exited {proc.returncode}" if proc.poll() is not None else "took over 300 s"))
            time.sleep(0.01)
        delay = rng.uniform(0.0, 0.9 * job_seconds)
        time.sleep(delay)  # the random kill point itself, not a wait for anything
        if proc.poll() is not None:
            raise RuntimeError(f"the job ended {delay:.2f} s after its first chunk, before the kill")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    return {"killed_after_s": delay, "killed_at_images": journal_done(journal)}


def resume_check(source: Path, model_dir: Path, work: Path, config: BenchConfig, suffix: str,
                 rng: random.Random) -> dict[str, Any]:
    """An uninterrupted ``--local`` job, then the same job killed at random and resumed: identical bytes?"""
    reference = work / f"uninterrupted{suffix}"
    resumed = work / f"resumed{suffix}"
    for path in (reference, resumed):
        path.unlink(missing_ok=True)
    whole = run_local(source, model_dir, work, config, name=reference.name)
    job_seconds = config.images / whole["rate"]
    kill = kill_at_random(local_args(source, model_dir, resumed, config), work / f"{resumed.name}.journal",
                          job_seconds, rng)
    finish = run_cli(local_args(source, model_dir, resumed, config, "--resume"), {**os.environ, **LOCAL_ENV}, work)
    result = {"format": suffix.lstrip("."), "images": config.images, **kill,
              "reference_sha256": sha256(reference), "resumed_sha256": sha256(resumed),
              "bytes": reference.stat().st_size, "resumed_peak_rss_mib": finish["peak_rss_mib"]}
    result["identical"] = result["reference_sha256"] == result["resumed_sha256"]
    print(f"resume check {suffix}: killed at {kill['killed_at_images']:,} images "
          f"({kill['killed_after_s']:.2f} s in), resumed: {'identical' if result['identical'] else 'DIFFERENT'}",
          flush=True)
    for path in (reference, resumed):
        path.unlink(missing_ok=True)
    return result


def run_service(source: Path, url: str, work: Path, config: BenchConfig, server: int | None) -> dict[str, Any]:
    """The CLI through the service; CPU is the client's in-job CPU plus the server's over the whole run."""
    out = work / "service.csv"
    before = cpu_of(server)
    result = run_cli(["--url", url, "batch", str(source), "--out", str(out), "--quiet",
                      "--batch-size", str(config.batch_size)], dict(os.environ), work)
    result["cpu_s"] += cpu_of(server) - before
    return result


def task_body(source: Path, start: int, count: int) -> bytes:
    """Rows ``start`` to ``start + count`` of the input as a ``.npy`` upload: a header, then the rows' bytes as
    the file holds them (one read; a client on the server's two cores takes CPU from the server)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (count, 28, 28)})
    with source.open("rb") as stream:
        np.lib.format.read_magic(stream)
        np.lib.format.read_array_header_1_0(stream)
        stream.seek(start * 784, os.SEEK_CUR)
        return header.getvalue() + stream.read(count * 784)


def poll_delay(view: dict[str, Any]) -> float:
    """Seconds until the next progress poll: half what the task still needs at its rate so far, from 20 ms to
    0.5 s. Every poll is a request the busy server answers; polling every 20 ms throughout took its CPU."""
    done, total, seconds = view.get("done") or 0, view.get("total") or 0, view.get("seconds") or 0.0
    if not done or not total:
        return 0.05
    return min(0.5, max(0.02, seconds * (total - done) / done / 2))


def one_task(url: str, source: Path, start: int, count: int) -> int:
    """Submit one dataset task (compact result), wait for it, check and return the number of answers."""
    import httpx

    from fashion.contract import ANSWER_DTYPE

    with httpx.Client(base_url=url, timeout=300) as client:
        reply = client.post("/classify_dataset/submit", content=task_body(source, start, count),
                            headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
        reply.raise_for_status()
        task_id = reply.json()["task_id"]
        while (view := client.get("/classify_dataset/progress", params={"task_id": task_id}).json())["status"] \
                == "in_progress":
            time.sleep(poll_delay(view))
        if view["status"] != "completed":
            raise RuntimeError(f"task {task_id} ended {view}")
        result = client.get("/classify_dataset/get", params={"task_id": task_id})
        records = np.load(io.BytesIO(result.content), allow_pickle=False)
        if records.dtype != ANSWER_DTYPE or len(records) != count:
            raise RuntimeError(f"task {task_id}: {len(records)} rows of {records.dtype}, expected {count}")
        return count


def run_tasks(source: Path, url: str, images: int, config: BenchConfig, server: int | None) -> dict[str, Any]:
    """All ``images`` as tasks of :data:`TASK_IMAGES`, ``task_concurrency`` at a time; rate over the whole wall.
    CPU: the server's, and this process's (which makes and uploads the files) over the same time."""
    starts = range(0, images, TASK_IMAGES)
    start, cpu = time.perf_counter(), time.process_time() + cpu_of(server)
    with ThreadPoolExecutor(config.task_concurrency) as pool:
        done = sum(pool.map(lambda s: one_task(url, source, s, min(TASK_IMAGES, images - s)), starts))
    wall = time.perf_counter() - start
    return {"wall_s": wall, "rate": done / wall, "cpu_s": time.process_time() + cpu_of(server) - cpu,
            "peak_rss_mib": None}


def cpu_used(server: int | None) -> tuple[float, float, float]:
    """Wall time now; CPU seconds used so far by every process on the machine; by this benchmark (itself, the
    CLI processes it has waited for, and the server)."""
    import psutil

    machine = psutil.cpu_times()
    own = os.times()
    return (time.perf_counter(), sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
            own.user + own.system + own.children_user + own.children_system + cpu_of(server))


def others_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """The share of the machine's CPU time that other processes used between two :func:`cpu_used` readings:
    0 on a quiet machine; what the wall rates lost to a shared one."""
    wall, machine, own = (b - a for a, b in zip(before, after, strict=True))
    return max(0.0, machine - own) / (wall * (os.cpu_count() or 1))


def measure(config: BenchConfig, source: Path, model_dir: Path, url: str | None, work: Path,
            server: int | None) -> list[dict[str, Any]]:
    """Every repeat runs each mode between two bare measurements; its fraction divides its rate by their mean.

    Others' work on a shared machine comes and goes within seconds: a bare rate taken just before and just
    after each run is the fairest ceiling for it.
    """
    repeats = []
    for repeat in range(config.repeats):
        row: dict[str, Any] = {"repeat": repeat + 1, "bare_runs": [bare_rate(model_dir, config.bare_images,
                                                                           config.batch_size)]}
        for mode in config.modes:
            if mode == "local":
                result = run_local(source, model_dir, work, config)
            elif mode == "local-one-call":
                result = run_local(source, model_dir, work, config, "--concurrency", "1")
            elif mode == "service":
                result = run_service(source, url, work, config, server)
            elif mode == "ray":
                result = run_cli(["batch", str(make_shards(source, config.shards)), "--out", str(work / "ray.csv"),
                                  "--engine", "ray", "--model", str(model_dir), "--quiet", "--batch-size",
                                  str(config.batch_size)], {**os.environ, **LOCAL_ENV}, work)
            else:
                result = run_tasks(source, url, config.images, config, server)
            row["bare_runs"].append(bare_rate(model_dir, config.bare_images, config.batch_size))
            around = row["bare_runs"][-2:]
            result["bare"] = statistics.mean(b["rate"] for b in around)
            result["fraction"] = result["rate"] / result["bare"]
            result["wall_fraction"] = config.images / result["wall_s"] / result["bare"]
            result["cpu_fraction"] = statistics.mean(b["cpu_per_image"] for b in around) * config.images \
                / result["cpu_s"]
            row[mode] = result
            print(f"repeat {repeat + 1} {mode}: {result['rate']:,.0f} images/s in the job, bare around it "
                  f"{result['bare']:,.0f}: {result['fraction']:.2f}; CPU {result['cpu_fraction']:.2f}; process "
                  f"{result['wall_s']:.1f} s", flush=True)
        row["bare"] = statistics.median(b["rate"] for b in row["bare_runs"])
        repeats.append(row)
    return repeats


def summarize(config: BenchConfig, repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats, and each target met or not."""
    summary: dict[str, Any] = {"bare": statistics.median(b["rate"] for r in repeats for b in r["bare_runs"])}
    for mode in config.modes:
        runs = [r[mode] for r in repeats]
        summary[mode] = {key: statistics.median(run[key] for run in runs)
                         for key in ("rate", "bare", "wall_s", "fraction", "wall_fraction", "cpu_fraction")}
        peaks = [run["peak_rss_mib"] for run in runs if run["peak_rss_mib"] is not None]
        summary[mode]["peak_rss_mib"] = max(peaks) if peaks else None
        summary[mode]["target"] = TARGETS.get(mode)
        summary[mode]["met"] = summary[mode]["fraction"] >= TARGETS[mode] if mode in TARGETS else None
    return summary


def shared_note(results: dict[str, Any]) -> str:
    """How much of the machine other processes took during the measurement (absent from older results)."""
    share = results.get("others_cpu_share")
    if share is None:
        return ""
    return (f" Other processes used {share:.0%} of the machine's CPU time while it ran"
            + (" (a shared machine: the absolute rates are low, and the wall fractions, targets marked *, are "
               "not to be judged by: rerun on a quiet machine; the CPU-based fractions move less)."
               if shared(results) else "."))


def shared(results: dict[str, Any]) -> bool:
    """Whether other processes took enough of the machine (5 % of its CPU) to make the wall fractions unfair."""
    return (results.get("others_cpu_share") or 0.0) >= 0.05


def write_report(config: BenchConfig, results: dict[str, Any], stem: str) -> Path:
    """``<stem>.md`` (the table) and ``<stem>.json`` (every run) under ``config.out``."""
    summary, env = results["summary"], results["environment"]
    lines = [f"# Batch throughput: {config.images:,} images, median of {config.repeats} repeats", "",
             f"{env['cpu']}, {env['cores']} cores; {results['date']}; `python -m benchmark.batch "
             f"--images {config.images} --repeats {config.repeats}`. The machine may be shared: each fraction "
             f"divides a run's rate by the bare rate measured just before and after it.{shared_note(results)}", "",
             f"Bare `session.run` at batch {config.batch_size} ({config.bare_images:,} images, measured before and "
             f"after every run): **{summary['bare']:,.0f} images/s** (median of all).", "",
             "| path | in-job images/s | bare around it | fraction of bare | target | process wall s "
             "| wall-based fraction | CPU-based fraction | peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mode in config.modes:
        s = summary[mode]
        peak = f"{s['peak_rss_mib']:,.0f}" if s["peak_rss_mib"] is not None else "-"
        verdict = ("met" if s["met"] else "**not met**") + ("*" if shared(results) else "")
        target = f">= {s['target']:.2f} {verdict}" if s.get("target") is not None else "-"
        lines.append(f"| {mode} | {s['rate']:,.0f} | {s['bare']:,.0f} | {s['fraction']:.2f} | {target} "
                     f"| {s['wall_s']:.1f} | {s['wall_fraction']:.2f} "
                     f"| {s['cpu_fraction']:.2f} | {peak} |")
    lines += ["", "Runs (in-job images/s, and the fraction of the mean bare rate just before and after the run):", ""]
    for row in results["repeats"]:
        bares = ", ".join(f"{b['rate']:,.0f}" for b in row["bare_runs"])
        parts = [f"bare {bares}"]
        parts += [f"{m} {row[m]['rate']:,.0f} ({row[m]['fraction']:.2f})" for m in config.modes]
        lines.append(f"- repeat {row['repeat']}: " + ", ".join(parts))
    lines += ["", "local: `python -m clients batch --local` as it comes, one single-threaded model call per core "
              "(clients.local.plan_local); local-one-call: the same with `--concurrency 1`, one call using every "
              "core (the default before).",
              "", "In-job rate: what the job prints (images over the job's own time, from the first chunk read to "
              "the output in place). Process wall: the whole CLI process, start-up and model loading included "
              "(for tasks: first upload to last result). Peak RSS: the largest of the CLI processes (`VmHWM`, "
              "read by the process as it ends). CPU-based fraction: bare CPU seconds per image (a session whose "
              "idle threads do not spin) over the path's (the CLI's in-job CPU plus the server's over the run); "
              "it moves less than the wall rates when others load the machine.",
              "", "A wall fraction above 1 means the bare session lost more to others' load than the job did: "
              "the bare session keeps ONNX Runtime's default of spinning idle threads, which waste their time "
              "slices when the cores are oversubscribed; the jobs' own sessions do not spin. Then the CPU-based "
              "fraction is the figure to read."]
    if "ray" in config.modes:
        lines += ["", f"ray: `python -m clients batch shards/ --engine ray` over {config.shards} `.npy` shards, one "
                  "single-threaded model actor a core; its in-job rate runs from the cluster being ready, so Ray's "
                  "start-up is in the process wall time only, and its CPU counts the driver and the workers."]
    lines += resume_lines(results.get("resume_checks") or [])
    return write_results(stem, "\n".join(lines), results, config.out)


def resume_lines(checks: list[dict[str, Any]]) -> list[str]:
    """The report's section on the kill-and-resume checks (none: nothing)."""
    if not checks:
        return []
    lines = ["", "## Killed at a random point and resumed", "",
             f"A `--local` job over the same {checks[0]['images']:,} images, SIGKILLed a random time after its "
             f"first journal line (uniform over 0.9 of the uninterrupted job's time; seed {checks[0]['seed']}), then "
             "finished with `--resume`; its output compared with an uninterrupted run's, byte for byte (SHA-256).", "",
             "| format | killed after | images in the journal at the kill | output bytes | identical | "
             "peak RSS of the resumed run MiB |", "| --- | --- | --- | --- | --- | --- |"]
    for check in checks:
        lines.append(f"| {check['format']} | {check['killed_after_s']:.2f} s | {check['killed_at_images']:,} "
                     f"| {check['bytes']:,} | {'yes' if check['identical'] else '**no**'} "
                     f"| {check['resumed_peak_rss_mib']:,.0f} |")
    return lines


def render(path: Path) -> int:
    """Rewrite the Markdown report from its JSON (after a change to the report's layout); measures nothing."""
    results = json.loads(path.read_text())
    config = BenchConfig(**{**results["config"], "modes": tuple(results["config"]["modes"]),
                            "resume_formats": tuple(results["config"].get("resume_formats", ())),
                            "out": path.parent, "work": None})
    print(write_report(config, results, path.stem))
    return 0


def parse_args(argv: list[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(prog="python -m benchmark.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000, help="images per job (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=BenchConfig.repeats,
                        help=f"repeats; the report gives medians (default {BenchConfig.repeats})")
    parser.add_argument("--batch-size", type=int, default=1024, help="images per model call or request (default 1024)")
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES,
                        help=f"paths to measure (default: {' '.join(DEFAULT_MODES)})")
    parser.add_argument("--shards", type=int, default=10, help="with the ray mode: array files it reads (default 10)")
    parser.add_argument("--bare-images", type=int, default=200_000,
                        help="images per bare session.run measurement, before and after each run (default 200,000)")
    parser.add_argument("--task-concurrency", type=int, default=2, help="dataset tasks in flight (default 2)")
    parser.add_argument("--url", default=None, help="a running service (default: start one)")
    parser.add_argument("--model", default=None, help="exported model folder or BentoML tag (default: latest)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the input and outputs (default: a temp)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes (default results/)")
    parser.add_argument("--resume-formats", nargs="*", default=[".csv", ".parquet"], choices=[".csv", ".parquet"],
                        help="output formats of the kill-and-resume check (default: both; none: skip it)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random kill points (default: random)")
    parser.add_argument("--render", type=Path, default=None, help="rewrite the report from this results JSON only")
    args = parser.parse_args(argv)
    if args.render:
        raise SystemExit(render(args.render))
    return BenchConfig(images=args.images, repeats=args.repeats, batch_size=args.batch_size, modes=tuple(args.modes),
                       url=args.url, model=args.model, work=args.work, out=args.out, shards=args.shards,
                       bare_images=args.bare_images, task_concurrency=args.task_concurrency,
                       resume_formats=tuple(args.resume_formats), seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    work = config.work or Path(tempfile.mkdtemp(prefix="fashion-bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    source, model_dir = make_input(work, config.images), onnx_model_dir(config.model)
    server, url = None, config.url
    needs_server = any(not mode.startswith("local") for mode in config.modes)
    if needs_server and url is None:
        server = launch(work)  # loopback, a BentoML home of its own, ready
        url = server.url
    try:
        pid = server.proc.pid if server is not None else None
        before = cpu_used(pid)
        repeats = measure(config, source, model_dir, url, work, pid)
        others = others_share(before, cpu_used(pid))
    finally:
        if server is not None:
            server.stop()
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)  # the kill points; the seed is recorded so that a run can be repeated
    resumes = [{**resume_check(source, model_dir, work, config, suffix, rng), "seed": seed}
               for suffix in config.resume_formats]
    env = environment_stamp()
    results = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "environment": env,
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
               "repeats": repeats, "summary": summarize(config, repeats), "others_cpu_share": others,
               "resume_checks": resumes}
    path = write_report(config, results, f"batch-bench-{machine_name(env, None)}")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
