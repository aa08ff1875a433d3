"""Batch classification that loses nothing and keeps up with the model.

A job is a pipeline of three stages that overlap: a reader thread reads (or decodes)
the next chunks, ``concurrency`` classifier threads run them (``--local``: one per core,
each a single-threaded model call, clients.local.plan_local says why), and the calling
thread writes each chunk's rows, in input order, to a part file. A classifier given as
:class:`Stages` has its own work split the same way (``--local``: scaling and the model
in the classifier thread, softmax in the writer). Every
stage works on whole arrays; nothing loops over rows in Python except the decoding of
image files and the ids of unreadable inputs.

After each chunk is appended, one line goes to the journal (``<out>.journal``): how
far the input is done, how long the part files are, and the running counts. A job
killed at any point (SIGKILL included) resumes with ``--resume``: the part files are
cut back to the last journal line and the input is read from there, so every input is
written exactly once. The output (CSV, JSON Lines or Parquet, in input order) and the
error report are renamed into place at the end, so a reader never sees a truncated file.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from clients.formats import Rows, error_lines, micro, output_format
from clients.sources import ArraySource, Chunk, FileSource
from fashion.contract import NUM_CLASSES

EXIT_OK, EXIT_PARTIAL, EXIT_FAILED = 0, 1, 2
ERRORS_HEADER = b"id,reason\n"


class JobError(RuntimeError):
    """The job cannot run or must stop (service down, too many errors, bad journal)."""


@dataclass(frozen=True)
class JobConfig:
    """Batch job settings (see ``python -m clients batch --help``)."""

    batch_size: int = 1024
    concurrency: int = 4
    max_errors: int | None = None
    resume: bool = False
    progress: bool = True
    prefetch: int = 2


@dataclass(frozen=True)
class Answers:
    """What a classifier returns for a chunk: one class id and confidence per image."""

    class_ids: np.ndarray  # uint8[n]
    confidences: np.ndarray  # float32[n]
    backend: str
    model_version: str


Classifier = Callable[[np.ndarray], Answers]
T = TypeVar("T")


def unchanged(value: T) -> T:
    return value


@dataclass(frozen=True)
class Stages:
    """A classifier in three parts, each run by the pipeline thread that has time for it.

    The model's thread is the job's bottleneck: anything else it does between model calls
    is time the model is not running. ``prepare`` runs in the reader thread on each chunk's
    pixels, ``infer`` in a classifier thread on what ``prepare`` returned, ``answer`` in the
    writing thread on what ``infer`` returned. A plain :data:`Classifier` is ``infer`` alone.
    """

    infer: Callable[[Any], Any]
    prepare: Callable[[np.ndarray], Any] = unchanged
    answer: Callable[[Any], Answers] = unchanged

    def __call__(self, pixels: np.ndarray) -> Answers:
        """All three in the calling thread: a :data:`Classifier` for whoever runs chunks some other way."""
        return self.answer(self.infer(self.prepare(pixels)))


@dataclass
class Summary:
    """What the job did; ``exit_code`` is 0 (all classified), 1 (some failed) or 2 (job failed)."""

    total: int = 0
    ok: int = 0
    failed: int = 0
    resumed: int = 0
    retried: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    accuracy: float | None = None
    confusion: np.ndarray | None = field(default=None, repr=False)

    @property
    def images_per_second(self) -> float:
        return (self.total - self.resumed) / self.seconds if self.seconds else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.failed == 0 else EXIT_PARTIAL

    def line(self) -> str:
        text = (f"total {self.total}, ok {self.ok}, failed {self.failed}, retried {self.retried}, "
                f"{self.images_per_second:,.0f} images/s, {self.cpu_seconds:.1f} CPU-s")
        if self.resumed:
            text += f", {self.resumed} taken from the journal"
        if self.accuracy is not None:
            text += f", accuracy {self.accuracy:.4f}"
        return text


@dataclass
class Progress:
    """One journal line: inputs done, part file sizes and running counts (cumulative, so the last line is enough)."""

    done: int = 0
    out_bytes: int = 0
    errors_bytes: int = len(ERRORS_HEADER)
    ok: int = 0
    failed: int = 0
    confusion: list[int] = field(default_factory=lambda: [0] * NUM_CLASSES**2)
    finished: bool = False

    def line(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode() + b"\n"


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


def errors_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.csv")


def part_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


def read_journal(path: Path) -> Progress | None:
    """The last complete journal line; a torn last line (a kill mid-write) is ignored. ``None``: nothing done."""
    if not path.exists():
        return None
    last = None
    with path.open("rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                last = raw
    if last is None:
        return None
    try:
        return Progress(**json.loads(last))
    except (ValueError, TypeError) as exc:
        raise JobError(f"{path}: not a journal of this version ({exc}); delete it to start over") from None


def cut_back(path: Path, size: int) -> None:
    """Truncate a part file to what the journal recorded (bytes written after it are redone)."""
    try:
        with path.open("r+b") as fh:
            if fh.seek(0, os.SEEK_END) < size:
                raise JobError(f"{path} is shorter than its journal says; delete the journal to start over")
            fh.truncate(size)
    except FileNotFoundError:
        raise JobError(f"{path} is missing but its journal is not; delete the journal to start over") from None


def prefetched(chunks: Iterator[T], depth: int) -> Iterator[T]:
    """The chunks, read ahead by a thread of their own (at most ``depth`` waiting)."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def offer(item: object) -> bool:
        """Queue ``item`` unless the consumer has gone (then ``False``)."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in chunks:
                if not offer(chunk):
                    return
            offer(end)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    reader = threading.Thread(target=read, name="batch-reader", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=10)


class Job:
    """The part files, journal and counts of one run; :meth:`write` appends one chunk's results."""

    def __init__(self, out: Path, config: JobConfig) -> None:
        self.out, self.config, self.format = out, config, output_format(out)
        self.journal = journal_path(out)
        self.part, self.errors_part = part_path(out), part_path(errors_path(out))
        if self.journal.exists() and not config.resume:
            raise JobError(f"{self.journal} exists from an interrupted run: pass --resume to finish it, or delete it")
        progress = read_journal(self.journal)
        if progress is None:
            self.part.write_bytes(self.format.header())
            self.errors_part.write_bytes(ERRORS_HEADER)
            progress = Progress(out_bytes=len(self.format.header()))
        elif not progress.finished:
            cut_back(self.part, progress.out_bytes)
            cut_back(self.errors_part, progress.errors_bytes)
        self.progress, self.resumed = progress, progress.done
        self.sink = self.journal.open("ab")
        # A finished journal (killed while renaming): only the renames are left, no part file may be recreated.
        self.rows_sink = None if progress.finished else self.part.open("ab")
        self.errors_sink = None if progress.finished else self.errors_part.open("ab")

    def write(self, chunk: Chunk, answers: Answers | None) -> None:
        """Append the chunk's rows and unreadable inputs, then its journal line (one write each)."""
        progress = self.progress
        if answers is not None:
            rows = Rows(chunk.ids, answers.class_ids, micro(answers.confidences), chunk.labels, answers.backend,
                        answers.model_version)
            progress.out_bytes += self.rows_sink.write(self.format.encode(rows))
            self.rows_sink.flush()  # in the file before the journal says so
            known = chunk.labels >= 0
            if known.any():
                pairs = chunk.labels[known].astype(np.int64) * NUM_CLASSES + answers.class_ids[known]
                counts = np.bincount(pairs, minlength=NUM_CLASSES**2)
                progress.confusion = (np.asarray(progress.confusion) + counts).tolist()
            progress.ok += len(rows)
        if chunk.failed:
            progress.errors_bytes += self.errors_sink.write(error_lines(chunk.failed))
            self.errors_sink.flush()
            progress.failed += len(chunk.failed)
        progress.done = chunk.start + chunk.count
        self.sink.write(progress.line())
        self.sink.flush()
        limit = self.config.max_errors
        if limit is not None and progress.failed > limit:
            first = chunk.failed[0]
            raise JobError(f"{progress.failed} inputs failed, more than --max-errors {limit}; "
                           f"first: {first[0]}: {first[1]}")

    def finish(self, summary: Summary) -> None:
        """Mark the journal finished, rename the outputs into place, drop the journal."""
        progress = self.progress
        if not progress.finished:
            progress.finished = True
            self.sink.write(progress.line())
            self.sink.flush()
        self.close()
        if self.errors_part.exists():
            os.replace(self.errors_part, errors_path(self.out))
        if self.part.exists():
            self.format.finish(self.part, self.out)
        self.journal.unlink()
        summary.total, summary.ok, summary.failed = progress.ok + progress.failed, progress.ok, progress.failed
        confusion = np.array(progress.confusion, np.int64).reshape(NUM_CLASSES, NUM_CLASSES)
        if confusion.sum():
            summary.accuracy = float(np.trace(confusion) / confusion.sum())
            summary.confusion = confusion

    def close(self) -> None:
        for sink in (self.sink, self.rows_sink, self.errors_sink):
            if sink is not None:
                sink.close()


def prepared(chunks: Iterator[Chunk], prepare: Callable[[np.ndarray], Any]) -> Iterator[tuple[Chunk, Any]]:
    """Each chunk with its pixels prepared for the model (``None``: no readable input in it)."""
    for chunk in chunks:
        yield chunk, prepare(chunk.pixels) if len(chunk.pixels) else None


def run_job(source: ArraySource | FileSource, out: Path, classify: Classifier | Stages, config: JobConfig,
            retried: Callable[[], int] = lambda: 0) -> Summary:
    """Classify every input, appending results as they come, then put the output and error report in place.

    Raises:
        JobError: a journal exists without ``resume``, too many errors, or the classifier failed for good.
    """
    from tqdm.auto import tqdm

    stages = classify if isinstance(classify, Stages) else Stages(classify)
    job = Job(out, config)
    summary = Summary(resumed=job.resumed)
    bar = tqdm(total=source.total, initial=job.resumed, unit="img", disable=not config.progress, dynamic_ncols=True,
               smoothing=0.1)
    start, cpu_start = time.perf_counter(), time.process_time()
    pending: deque[tuple[Chunk, Future | None]] = deque()
    models = ThreadPoolExecutor(max(1, config.concurrency), thread_name_prefix="classify")
    try:
        def write_oldest() -> None:
            chunk, future = pending.popleft()
            job.write(chunk, stages.answer(future.result()) if future is not None else None)
            bar.update(chunk.count)

        if not job.progress.finished:
            chunks = prepared(source.chunks(job.resumed, config.batch_size), stages.prepare)
            for chunk, inputs in prefetched(chunks, config.prefetch):
                pending.append((chunk, models.submit(stages.infer, inputs) if inputs is not None else None))
                if len(pending) > config.concurrency:
                    write_oldest()
            while pending:
                write_oldest()
    except BaseException:
        models.shutdown(wait=True, cancel_futures=True)
        job.close()
        raise
    finally:
        bar.close()
    models.shutdown()
    summary.retried = retried()
    job.finish(summary)
    summary.seconds = time.perf_counter() - start
    # This process's CPU over the job, every thread (the model's too with --local): on a shared machine a
    # steadier measure of the job's cost than its wall time.
    summary.cpu_seconds = time.process_time() - cpu_start
    return summary


def answers_from_records(records: np.ndarray, backend: str, model_version: str) -> Answers:
    """:class:`Answers` from rows of :data:`fashion.contract.ANSWER_DTYPE`."""
    return Answers(records["class_id"], records["confidence"], backend, model_version)


def describe(summary: Summary) -> dict[str, Any]:
    """The summary as JSON-ready numbers (for benchmarks)."""
    return {"total": summary.total, "ok": summary.ok, "failed": summary.failed, "resumed": summary.resumed,
            "seconds": summary.seconds, "cpu_seconds": summary.cpu_seconds,
            "images_per_second": summary.images_per_second}
