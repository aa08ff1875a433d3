"""Batch classification on Ray Data: ``python -m clients batch SHARDS... --out preds.csv --engine ray``.

The input is cut into shards: each IDX/.npy/.npz file is one shard, a folder of image
files is cut into runs of ``shard_size`` files in the order the CLI reads them. The
shards become the rows of a Ray Data dataset, and ``map_batches`` hands them, one at a
time, to a pool of actors, each holding the exported model loaded once. An actor
classifies a shard with the CLI's own job (:func:`clients.batch.run_job` over a
:mod:`clients.sources` reader, :meth:`clients.local.LocalClassifier.records` for the
model), so a shard's output is, byte for byte, what ``--local`` writes for it.

Exactly once, at shard granularity: each attempt at a shard writes into a folder of
its own (``<parts>/.attempts/<shard>.<pid>.<host>.<random>``), and the shard is
committed by renaming that folder to ``<parts>/<shard>`` (one atomic rename; a later
attempt that finds it there drops its own copy). A worker killed mid-shard leaves an
attempt folder and nothing committed: Ray restarts the actor and runs the shard again
on it, and a rerun with ``--resume`` skips every committed shard. When
all are committed, the driver concatenates them in shard order into ``<out>`` (renamed
into place) and removes the parts: the output of a run over one folder is the CLI's,
byte for byte.

Nothing here imports Ray until a job runs; the service never imports this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.batch import Classifier, JobConfig, JobError, Summary, answers_from_records, errors_path, run_job
from clients.formats import ParquetFormat, output_format
from clients.sources import ArraySource, FileItem, FileSource, SourceError, iter_folder, open_source
from fashion.contract import NUM_CLASSES

ARRAY_FILE = re.compile(r"(idx3-ubyte(\.gz)?|\.npy|\.npz)$")
LABELS_FILE = re.compile(r"idx1-ubyte(\.gz)?$")
ATTEMPTS = ".attempts"
PLAN, SUMMARY, ROWS = "plan.json", "summary.json", "rows"


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide a Ray job runs (see ``python -m clients batch --help``).

    Attributes:
        address: ``None`` starts a Ray instance for this job on this machine; ``auto`` joins the cluster that
            ``ray start`` runs here; ``ray://head:10001`` joins a remote one through Ray Client.
        workers: actors in the pool (``None``: the cluster's CPUs over ``cpus_per_worker``).
        cpus_per_worker: CPUs Ray reserves for each actor, and its model's threads.
        shard_size: image files per shard (array files are one shard each).
        pause_file: while this file exists, workers wait before each model call. A gate for tests and
            demonstrations: a worker can be killed at a known point of a shard.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1
    shard_size: int = 8192
    pause_file: Path | None = None


@dataclass(frozen=True)
class Shard:
    """One unit of work and of commit: an array file, or a run of image files (``(id, path, label)`` each)."""

    index: int
    images: int
    array: str | None = None
    files: tuple[tuple[str, str, int | None], ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.index:05d}"

    def source(self) -> ArraySource | FileSource:
        """The shard's reader: the CLI's own, so it reads and decodes exactly as the CLI does."""
        if self.array is not None:
            return open_source(self.array)
        items = [FileItem(item_id, Path(path), label) for item_id, path, label in self.files]
        return FileSource(lambda: iter(items), len(items))

    def key(self) -> list[Any]:
        """What a resumed run must find unchanged: the file, or the first and last ids of the run."""
        return [self.array] if self.array else [self.files[0][0], self.files[-1][0], len(self.files)]


def file_shards(items: list[FileItem], first_index: int, shard_size: int) -> list[Shard]:
    """Runs of ``shard_size`` image files, in the given order."""
    return [Shard(first_index + n, len(run), files=tuple((i.id, str(i.path.resolve()), i.label) for i in run))
            for n, run in enumerate(items[start:start + shard_size] for start in range(0, len(items), shard_size))]


def array_shard(index: int, path: Path) -> Shard:
    """One array file as a shard (its header is read now, so a bad file fails before any work starts)."""
    source = open_source(str(path))
    if not isinstance(source, ArraySource):
        raise SourceError(f"{path}: not an IDX, .npy or .npz file of images")
    return Shard(index, source.total, array=str(path.resolve()))


def plan_shards(inputs: list[str], shard_size: int) -> list[Shard]:
    """The shards of ``inputs``, in order: array files (or a folder of them) and folders of image files.

    A folder whose files are all IDX/.npy/.npz arrays is a list of array shards (IDX labels files beside
    their images are read with them); any other folder is image files, cut into runs of ``shard_size``.
    """
    if shard_size < 1:
        raise ValueError("--shard-size must be at least 1")
    shards: list[Shard] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            items = list(iter_folder(path))
            arrays = [i for i in items if not LABELS_FILE.search(i.path.name)]
            if arrays and all(ARRAY_FILE.search(i.path.name) for i in arrays):
                shards += [array_shard(len(shards) + n, i.path) for n, i in enumerate(arrays)]
            else:
                shards += file_shards(items, len(shards), shard_size)
        elif path.is_file():
            shards.append(array_shard(len(shards), path))
        else:
            raise SourceError(f"{spec}: no such folder or file")
    return shards


def parts_folder(out: Path) -> Path:
    return out.with_name(f".{out.name}.parts")


def is_committed(parts: Path, shard: Shard) -> bool:
    return (parts / shard.name / SUMMARY).exists()


def open_parts(out: Path, shards: list[Shard], resume: bool) -> Path:
    """The parts folder of this job: new, or (``resume``) one left by an interrupted run over the same shards."""
    parts = parts_folder(out)
    plan = {"format": out.suffix, "shards": [s.key() for s in shards]}
    if parts.exists():
        if not resume:
            raise JobError(f"{parts} exists from an interrupted run: pass --resume to finish it, or delete it")
        if json.loads((parts / PLAN).read_text()) != plan:
            raise JobError(f"{parts} was written for other inputs or another format; delete it to start over")
        return parts
    (parts / ATTEMPTS).mkdir(parents=True)
    tmp = parts / f".{PLAN}.tmp"
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, parts / PLAN)
    return parts


def commit(attempt: Path, final: Path) -> None:
    """Put a finished attempt in place with one rename; if another attempt got there first, keep that one."""
    try:
        os.rename(attempt, final)
    except OSError:
        if not (final / SUMMARY).exists():
            raise
        # A retry that raced a worker Ray thought lost: both wrote the same bytes; the first commit stands.
        shutil.rmtree(attempt)


def paused_classifier(classify: Classifier, pause_file: Path | None) -> Classifier:
    """``classify``, waiting first while ``pause_file`` exists (see :class:`RayConfig`)."""
    if pause_file is None:
        return classify

    def wait_then_classify(pixels: np.ndarray):
        while pause_file.exists():
            time.sleep(0.02)
        return classify(pixels)

    return wait_then_classify


def classify_shard(shard: Shard, classify: Classifier, parts: Path, suffix: str, batch_size: int) -> dict[str, Any]:
    """Classify one shard into an attempt folder of its own, then commit it. Returns its counts."""
    attempt = parts / ATTEMPTS / f"{shard.name}.{os.getpid()}.{socket.gethostname()}.{uuid.uuid4().hex[:8]}"
    attempt.mkdir()
    summary = run_job(shard.source(), attempt / f"{ROWS}{suffix}", classify,
                      JobConfig(batch_size=batch_size, concurrency=1, progress=False))
    counts = {"ok": summary.ok, "failed": summary.failed, "seconds": summary.seconds,
              "cpu_seconds": summary.cpu_seconds,
              "confusion": None if summary.confusion is None else summary.confusion.ravel().tolist()}
    (attempt / SUMMARY).write_text(json.dumps(counts))
    commit(attempt, parts / shard.name)
    return counts


class ShardWorker:
    """A Ray Data actor: loads the model once, then classifies the shards it is given, one per row."""

    def __init__(self, model_dir: str, backend: str | None, threads: int, parts: str, suffix: str, batch_size: int,
                 pause_file: str | None) -> None:
        from clients.local import LocalClassifier

        model = LocalClassifier.open(model_dir, backend, threads=threads)
        classify = lambda pixels: answers_from_records(model.records(pixels), model.backend, model.version)  # noqa: E731
        self.classify = paused_classifier(classify, Path(pause_file) if pause_file else None)
        self.parts, self.suffix, self.batch_size = Path(parts), suffix, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        failed = [classify_shard(Shard(**json.loads(spec)), self.classify, self.parts, self.suffix,
                                 self.batch_size)["failed"] for spec in batch["spec"]]
        return {"shard": batch["shard"], "failed": np.array(failed, np.int64)}


def shard_row(shard: Shard) -> dict[str, Any]:
    return {"shard": shard.index, "spec": json.dumps(asdict(shard))}


def connect(address: str | None) -> bool:
    """Join (or, with no address, start) Ray unless this process already has; ``True`` if this call did."""
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False} if address is None else {}
    ray.init(address=address, log_to_driver=False, **options)
    return True


def run_shards(todo: list[Shard], model_dir: Path, backend: str | None, parts: Path, suffix: str, job: JobConfig,
               config: RayConfig) -> Iterator[tuple[int, int]]:
    """Classify ``todo`` on Ray Data; yields each shard's index and failed count as its commit reaches the driver."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    workers = config.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // config.cpus_per_worker)
    dataset = ray.data.from_items([shard_row(s) for s in todo], override_num_blocks=len(todo))
    results = dataset.map_batches(
        ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo))),
        num_cpus=config.cpus_per_worker,
        fn_constructor_kwargs={"model_dir": str(model_dir), "backend": backend, "threads": config.cpus_per_worker,
                               "parts": str(parts), "suffix": suffix, "batch_size": job.batch_size,
                               "pause_file": str(config.pause_file) if config.pause_file else None})
    # A dead actor is restarted and its shards run again on it: Ray Data's defaults for actor pools
    # (max_restarts=-1, max_task_retries=-1, set in ActorPoolMapOperator._apply_default_remote_args). Passing
    # them to map_batches is deprecated since Ray 2.60, and the retry is safe here: a shard commits once.
    try:
        for row in results.iter_rows():
            yield int(row["shard"]), int(row["failed"])
    except ray.exceptions.RayError as exc:
        # A shard that cannot be read (a truncated file) fails in its actor; the committed shards stay.
        raise JobError(f"the Ray job failed: {exc}; shards committed so far are kept for --resume") from exc


def assemble(parts: Path, shards: list[Shard], out: Path) -> None:
    """The committed shards concatenated in shard order into ``out`` and its error report, each renamed into place."""
    fmt = output_format(out)
    rows = [parts / s.name / f"{ROWS}{out.suffix}" for s in shards]
    if isinstance(fmt, ParquetFormat):
        part = parts / ".all.part"
        write_ipc_parts(rows, part)
        fmt.finish(part, out)
    else:
        concatenate(rows, len(fmt.header()), out)
    concatenate([errors_path(parts / s.name / f"{ROWS}{out.suffix}") for s in shards], len(b"id,reason\n"),
                errors_path(out))


def concatenate(files: list[Path], header: int, out: Path) -> None:
    """The files one after another, the first ``header`` bytes of all but the first dropped; renamed into place."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as sink:
        for n, path in enumerate(files):
            with path.open("rb") as fh:
                fh.seek(header if n else 0)
                shutil.copyfileobj(fh, sink, 1 << 20)
    os.replace(tmp, out)


def write_ipc_parts(files: list[Path], part: Path) -> None:
    """Parquet shards as the part file :meth:`ParquetFormat.finish` reads (length-prefixed Arrow IPC streams), so
    the final file gets the CLI's row groups whatever the shard sizes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with part.open("wb") as sink:
        for path in files:
            table = pq.read_table(path)
            buffer = pa.BufferOutputStream()
            with pa.ipc.new_stream(buffer, table.schema) as writer:
                writer.write_table(table)
            data = buffer.getvalue().to_pybytes()
            sink.write(len(data).to_bytes(8, "little") + data)


def total_summary(parts: Path, shards: list[Shard], fresh: set[int], resumed: int) -> Summary:
    """The job's counts, summed over the shards' own summaries (CPU: only the ``fresh`` ones, run by this job)."""
    summary, confusion = Summary(resumed=resumed), np.zeros(NUM_CLASSES * NUM_CLASSES, np.int64)
    for shard in shards:
        counts = json.loads((parts / shard.name / SUMMARY).read_text())
        summary.ok += counts["ok"]
        summary.failed += counts["failed"]
        summary.cpu_seconds += counts["cpu_seconds"] if shard.index in fresh else 0.0
        if counts["confusion"] is not None:
            confusion += np.asarray(counts["confusion"], np.int64)
    summary.total = summary.ok + summary.failed
    if confusion.sum():
        summary.confusion = confusion.reshape(NUM_CLASSES, NUM_CLASSES)
        summary.accuracy = float(np.trace(summary.confusion) / confusion.sum())
    return summary


def run_ray_job(inputs: list[str], out: Path, model: str | None, backend: str | None, job: JobConfig,
                config: RayConfig) -> Summary:
    """Classify every shard of ``inputs`` on Ray Data, then put the output and error report in place.

    Args:
        inputs: array files, folders of them, or folders of image files (see :func:`plan_shards`).
        out: ``.csv``, ``.jsonl`` or ``.parquet``, as for the CLI.
        model: exported model folder or BentoML tag, as for ``--local`` (resolved here, on the driver: on a
            cluster the folder must be readable at the same path on every node).
        job: ``batch_size``, ``resume``, ``max_errors`` (over the whole job) and ``progress`` are used.

    Returns:
        The counts; ``seconds`` runs from Ray being ready (its start-up is not the job's) to the output in place.

    Raises:
        JobError: a parts folder exists without ``resume``, too many errors, or Ray gave up on a shard.
    """
    from clients.local import model_folder

    output_format(out)
    shards = plan_shards(inputs, config.shard_size)
    parts = open_parts(out, shards, job.resume)
    todo = [s for s in shards if not is_committed(parts, s)]
    resumed = sum(s.images for s in shards) - sum(s.images for s in todo)
    start, cpu_start = time.perf_counter(), time.process_time()
    if todo:
        model_dir = model_folder(model, backend or "onnx-torch")
        started = connect(config.address)
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            classify_all(shards, todo, parts, resumed, lambda: run_shards(todo, model_dir, backend, parts, out.suffix,
                                                                          job, config), job)
        finally:
            if started:
                import ray

                ray.shutdown()
    missing = [s.name for s in shards if not is_committed(parts, s)]
    if missing:
        raise JobError(f"shards {', '.join(missing)} were not committed; run again with --resume")
    assemble(parts, shards, out)
    summary = total_summary(parts, shards, {s.index for s in todo}, resumed)
    shutil.rmtree(parts)
    summary.seconds = time.perf_counter() - start
    summary.cpu_seconds += time.process_time() - cpu_start
    return summary


def classify_all(shards: list[Shard], todo: list[Shard], parts: Path, resumed: int,
                 run: Callable[[], Iterator[tuple[int, int]]], job: JobConfig) -> None:
    """Follow the shards' commits: a progress bar, and the job stopped once more than ``max_errors`` inputs failed."""
    from tqdm.auto import tqdm

    by_index = {s.index: s for s in todo}
    failed = sum(json.loads((parts / s.name / SUMMARY).read_text())["failed"]
                 for s in shards if s.index not in by_index)
    with tqdm(total=sum(s.images for s in shards), initial=resumed, unit="img", disable=not job.progress) as bar:
        for index, shard_failed in run():
            failed += shard_failed
            bar.update(by_index[index].images)
            if job.max_errors is not None and failed > job.max_errors:
                raise JobError(f"{failed} inputs failed, more than --max-errors {job.max_errors}; "
                               f"see the errors.csv of the shards in {parts}")
