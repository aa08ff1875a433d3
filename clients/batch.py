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
from typing import Any

import numpy as np

from clients.sources import Item
from fashion.contract import IMAGE_SIZE, NUM_CLASSES
from fashion.imaging import ImageError, decode_image

EXIT_OK, EXIT_PARTIAL, EXIT_FAILED = 0, 1, 2
COLUMNS = ("id", "label", "class_id", "confidence", "backend", "model_version", "true_label")
Classifier = Callable[[np.ndarray], Awaitable[list[dict[str, Any]]]]


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


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


def errors_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.csv")


def read_journal(path: Path) -> dict[int, dict[str, Any]]:
    """Records by input position; a torn last line (a kill mid-write) is ignored."""
    records: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return records
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            record = json.loads(raw)
            records.setdefault(record["seq"], record)
    return records


def decode_chunk(chunk: list[tuple[int, Item]]) -> tuple[list[tuple[int, Item]], np.ndarray, list[dict[str, Any]]]:
    """Pixels of the readable items and an error record for each unreadable one."""
    good, pixels, errors = [], [], []
    for seq, item in chunk:
        try:
            if item.pixels is not None:
                array = np.asarray(item.pixels)
                if array.shape != (IMAGE_SIZE, IMAGE_SIZE) or array.dtype != np.uint8:
                    raise ImageError(f"expected uint8 28 x 28 pixels, got {array.dtype} {array.shape}")
            else:
                array = decode_image(item.path.read_bytes())
        except (ImageError, OSError) as exc:
            errors.append({"seq": seq, "id": item.id, "ok": False, "error": str(exc)})
            continue
        good.append((seq, item))
        pixels.append(array)
    stacked = np.stack(pixels) if pixels else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    return good, stacked, errors


def _records(good: list[tuple[int, Item]], answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"seq": seq, "id": item.id, "ok": True, "label": a["label"], "class_id": a["class_id"],
         # Rounded so that a resumed job (other chunk boundaries, other float rounding) writes the same file.
         "confidence": round(a["confidence"], 6), "backend": a["backend"], "model_version": a["model_version"],
         "true_label": item.label}
        for (seq, item), a in zip(good, answers, strict=True)
    ]


def _chunks(items: Iterator[Item], done: dict[int, Any], size: int) -> Iterator[list[tuple[int, Item]]]:
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
    done = read_journal(journal)
    summary = Summary(resumed=len(done), failed=sum(not r["ok"] for r in done.values()))
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
                good, pixels, errors = await loop.run_in_executor(decoders, decode_chunk, chunk)
                answers = await classify(pixels) if len(pixels) else []
                records = _records(good, answers) + errors
                sink.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
                sink.flush()
                summary.failed += len(errors)
                bar.update(len(chunk))
                if config.max_errors is not None and summary.failed > config.max_errors:
                    raise JobError(f"{summary.failed} inputs failed, more than --max-errors {config.max_errors}; "
                                   f"first: {errors[0]['id']}: {errors[0]['error']}")

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
    records = [r for _, r in sorted(read_journal(journal_path(out)).items())]
    ok = [r for r in records if r["ok"]]
    failed = [r for r in records if not r["ok"]]
    summary.total, summary.ok, summary.failed = len(records), len(ok), len(failed)
    buffer = io.StringIO()
    if out.suffix == ".jsonl":
        for r in ok:
            buffer.write(json.dumps({k: r[k] for k in COLUMNS}) + "\n")
    else:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([r[k] if r[k] is not None else "" for k in COLUMNS] for r in ok)
    _atomic_write(out, buffer.getvalue())
    report = io.StringIO()
    writer = csv.writer(report, lineterminator="\n")
    writer.writerow(("id", "reason"))
    writer.writerows((r["id"], r["error"]) for r in failed)
    _atomic_write(errors_path(out), report.getvalue())
    labelled = [r for r in ok if r["true_label"] is not None]
    if labelled:
        from fashion.metrics import confusion_matrix

        truth = np.array([r["true_label"] for r in labelled])
        predicted = np.array([r["class_id"] for r in labelled])
        summary.accuracy = float((truth == predicted).mean())
        summary.confusion = confusion_matrix(truth, predicted)
        assert summary.confusion.shape == (NUM_CLASSES, NUM_CLASSES)
    journal_path(out).unlink()
