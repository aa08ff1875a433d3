"""Batch classification that loses nothing: streamed input, concurrent requests, resumable, atomic output.

Every finished chunk is appended to a journal (``<out>.journal``) in one write,
so a job killed at any point (SIGKILL included) resumes with ``--resume`` and
skips exactly what the journal holds. The final output (CSV or JSON Lines,
sorted in input order) and the error report are written to temporary files and
renamed into place, so a reader never sees a truncated file.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.sources import Item
from fashion.contract import IMAGE_SIZE
from fashion.imaging import ImageError, decode_image

EXIT_OK, EXIT_PARTIAL, EXIT_FAILED = 0, 1, 2
COLUMNS = ("id", "label", "class_id", "confidence", "backend", "model_version", "true_label")
Classifier = Callable[[np.ndarray], Awaitable["Answers"]]


class JobError(RuntimeError):
    """The job cannot run or must stop (service down, too many errors, bad journal)."""


@dataclass(frozen=True)
class JobConfig:
    """Batch job settings (see ``python -m clients batch --help``)."""

    batch_size: int = 512
    concurrency: int = 4
    max_errors: int | None = None
    resume: bool = False
    progress: bool = True


@dataclass
class Summary:
    """What the job did; ``exit_code`` is 0 (all classified), 1 (some failed) or 2 (job failed)."""

    total: int = 0
    ok: int = 0
    failed: int = 0
    resumed: int = 0
    retried: int = 0
    seconds: float = 0.0
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
                f"{self.images_per_second:,.0f} images/s")
        if self.resumed:
            text += f", {self.resumed} taken from the journal"
        if self.accuracy is not None:
            text += f", accuracy {self.accuracy:.4f}"
        return text


@dataclass(frozen=True)
class Answers:
    """What a classifier returns for a chunk: one class id and confidence per image."""

    class_ids: list[int]
    confidences: list[float]
    backend: str
    model_version: str


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


def errors_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.csv")


def read_journal(path: Path) -> tuple[dict[int, tuple], dict[int, tuple]]:
    """Finished rows and failed inputs by input position; a torn last line (a kill mid-write) is ignored.

    Each journal line is one chunk, column-wise: ``{"ok": {...}, "failed": {...}}``.
    """
    ok: dict[int, tuple] = {}
    failed: dict[int, tuple] = {}
    if not path.exists():
        return ok, failed
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            chunk = json.loads(raw)
            good, bad = chunk["ok"], chunk["failed"]
            for row in zip(good["seq"], good["id"], good["class_id"], good["confidence"], good["true_label"],
                           strict=True):
                ok.setdefault(row[0], (*row[1:], good["backend"], good["model_version"]))
            for seq, item_id, reason in zip(bad["seq"], bad["id"], bad["error"], strict=True):
                failed.setdefault(seq, (item_id, reason))
    return ok, failed


def decode_chunk(chunk: list[tuple[int, Item]]) -> tuple[list[tuple[int, Item]], np.ndarray, dict[str, list]]:
    """Pixels of the readable items, and the unreadable ones with the reason.

    Array items were validated as a whole when their source was opened; files are decoded here.
    """
    good, pixels = [], []
    failed: dict[str, list] = {"seq": [], "id": [], "error": []}
    for seq, item in chunk:
        try:
            array = item.pixels if item.pixels is not None else decode_image(item.path.read_bytes())
        except (ImageError, OSError) as exc:
            failed["seq"].append(seq)
            failed["id"].append(item.id)
            failed["error"].append(str(exc))
            continue
        good.append((seq, item))
        pixels.append(array)
    stacked = np.stack(pixels) if pixels else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    return good, stacked, failed


def journal_line(good: list[tuple[int, Item]], answers: Answers | None, failed: dict[str, list]) -> bytes:
    """One chunk's results as one JSON line (written with a single write)."""
    ok = {
        "seq": [seq for seq, _ in good], "id": [item.id for _, item in good],
        "class_id": answers.class_ids if answers else [],
        # Rounded so that a resumed job (other chunk boundaries, other float rounding) writes the same file.
        "confidence": [round(c, 6) for c in answers.confidences] if answers else [],
        "true_label": [item.label for _, item in good],
        "backend": answers.backend if answers else "", "model_version": answers.model_version if answers else "",
    }
    return json.dumps({"ok": ok, "failed": failed}).encode() + b"\n"


def _chunks(items: Iterator[Item], done: set[int], size: int) -> Iterator[list[tuple[int, Item]]]:
    chunk: list[tuple[int, Item]] = []
    for seq, item in enumerate(items):
        if seq in done:
            continue
        chunk.append((seq, item))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def run_job(items: Iterator[Item], total: int | None, out: Path, classify: Classifier, config: JobConfig,
                  retried: Callable[[], int] = lambda: 0) -> Summary:
    """Classify every item, journaling as it goes, then write the final output and error report.

    Raises:
        JobError: a journal exists without ``resume``, too many errors, or the classifier failed for good.
    """
    from tqdm.auto import tqdm

    journal = journal_path(out)
    if journal.exists() and not config.resume:
        raise JobError(f"{journal} exists from an interrupted run: pass --resume to finish it, or delete it")
    done_ok, done_failed = read_journal(journal)
    done = set(done_ok) | set(done_failed)
    summary = Summary(resumed=len(done), failed=len(done_failed))
    bar = tqdm(total=total, initial=len(done), unit="img", disable=not config.progress, dynamic_ncols=True)
    queue: asyncio.Queue = asyncio.Queue(maxsize=config.concurrency * 2)
    start = time.perf_counter()
    with journal.open("ab") as sink, ThreadPoolExecutor(max(2, config.concurrency)) as decoders:
        loop = asyncio.get_running_loop()

        async def produce() -> None:
            chunks = _chunks(items, done, config.batch_size)
            while (chunk := await loop.run_in_executor(decoders, next, chunks, None)) is not None:
                await queue.put(chunk)
            for _ in range(config.concurrency):
                await queue.put(None)

        async def consume() -> None:
            while (chunk := await queue.get()) is not None:
                good, pixels, failed = await loop.run_in_executor(decoders, decode_chunk, chunk)
                answers = await classify(pixels) if len(pixels) else None
                sink.write(journal_line(good, answers, failed))
                sink.flush()
                summary.failed += len(failed["seq"])
                bar.update(len(chunk))
                if config.max_errors is not None and summary.failed > config.max_errors:
                    raise JobError(f"{summary.failed} inputs failed, more than --max-errors {config.max_errors}; "
                                   f"first: {failed['id'][0]}: {failed['error'][0]}")

        tasks = [asyncio.create_task(produce())] + [asyncio.create_task(consume()) for _ in range(config.concurrency)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - start
    summary.retried = retried()
    finish(out, summary)
    return summary


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def finish(out: Path, summary: Summary) -> None:
    """Write the sorted output and the error report from the journal, atomically; then drop the journal."""
    from fashion.contract import CLASS_NAMES

    ok, failed = read_journal(journal_path(out))
    summary.total, summary.ok, summary.failed = len(ok) + len(failed), len(ok), len(failed)
    rows = [(item_id, CLASS_NAMES[class_id], class_id, confidence, backend, version, true_label)
            for _, (item_id, class_id, confidence, true_label, backend, version) in sorted(ok.items())]
    buffer = io.StringIO()
    if out.suffix == ".jsonl":
        buffer.writelines(json.dumps(dict(zip(COLUMNS, row, strict=True))) + "\n" for row in rows)
    else:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    _atomic_write(out, buffer.getvalue())
    report = io.StringIO()
    writer = csv.writer(report, lineterminator="\n")
    writer.writerow(("id", "reason"))
    writer.writerows(reason for _, reason in sorted(failed.items()))
    _atomic_write(errors_path(out), report.getvalue())
    labelled = [(row[2], row[6]) for row in rows if row[6] is not None]
    if labelled:
        from fashion.metrics import confusion_matrix

        predicted, truth = (np.array(column) for column in zip(*labelled, strict=True))
        summary.accuracy = float((truth == predicted).mean())
        summary.confusion = confusion_matrix(truth, predicted)
    journal_path(out).unlink()
