"""The batch job's pipeline (clients.batch) with an in-memory source and fake classifiers: order, errors, stops."""

from __future__ import annotations

import csv
import io
import threading
import time

import numpy as np
import pytest

from clients.batch import Answers, JobConfig, JobError, Stages, prefetched, run_job
from clients.sources import ArraySource


def memory_source(count: int) -> ArraySource:
    pixels = (np.arange(count, dtype=np.int64) % 256).astype(np.uint8).repeat(784).reshape(count, 28, 28)
    return ArraySource("mem", lambda: io.BytesIO(pixels.tobytes()), count)


def by_first_pixel(pixels: np.ndarray) -> Answers:
    """Class = first pixel mod 10, so every row's answer says which input it came from."""
    first = pixels[:, 0, 0].astype(np.int64)
    return Answers((first % 10).astype(np.uint8), np.full(len(pixels), 0.5, np.float32), "fake", "v")


def test_rows_are_written_in_input_order_when_answers_come_back_out_of_order(tmp_path):
    third_done = threading.Event()

    def classify(pixels: np.ndarray) -> Answers:
        if pixels[0, 0, 0] == 0:  # the first chunk finishes last
            assert third_done.wait(30), "the third chunk was never classified"
        if pixels[0, 0, 0] == 20:
            third_done.set()
        return by_first_pixel(pixels)

    out = tmp_path / "out.csv"
    summary = run_job(memory_source(45), out, classify, JobConfig(batch_size=10, concurrency=4, progress=False))
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == [f"mem#{i}" for i in range(45)]
    assert [int(r["class_id"]) for r in rows] == [i % 10 for i in range(45)]
    assert summary.ok == summary.total == 45 and summary.failed == 0


def test_a_failing_classifier_fails_the_job_and_keeps_the_journal(tmp_path):
    def classify(pixels: np.ndarray) -> Answers:
        if pixels[0, 0, 0] == 30:
            raise RuntimeError("model lost")
        return by_first_pixel(pixels)

    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="model lost"):
        run_job(memory_source(60), out, classify, JobConfig(batch_size=10, concurrency=1, progress=False))
    assert not out.exists() and (tmp_path / "out.jsonl.journal").exists()
    with pytest.raises(JobError, match="--resume"):
        run_job(memory_source(60), out, by_first_pixel, JobConfig(batch_size=10, concurrency=1, progress=False))
    summary = run_job(memory_source(60), out, by_first_pixel,
                      JobConfig(batch_size=10, concurrency=1, progress=False, resume=True))
    assert summary.resumed == 30 and len(out.read_text().splitlines()) == 60


def test_a_reading_error_reaches_the_consumer():
    def chunks():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(chunks(), 2))


def test_a_consumer_that_stops_early_does_not_wait_for_the_reader():
    started = time.monotonic()
    reader = prefetched(iter(range(1000)), 2)
    assert next(reader) == 0
    reader.close()
    # Hang guard, 50x what it takes: the reader sees the stop within one 0.1 s queue timeout.
    assert time.monotonic() - started < 5


def test_stages_run_in_the_reader_model_and_writer_threads_and_write_what_one_call_writes(tmp_path):
    threads: dict[str, set[str]] = {"prepare": set(), "infer": set(), "answer": set()}

    def stage(name, work):
        def run(value):
            threads[name].add(threading.current_thread().name)
            return work(value)
        return run

    stages = Stages(infer=stage("infer", lambda first: first), prepare=stage("prepare", lambda px: px[:, 0, 0]),
                    answer=stage("answer", lambda first: by_first_pixel(first[:, None, None])))
    config = JobConfig(batch_size=10, concurrency=1, progress=False)
    summary = run_job(memory_source(45), tmp_path / "staged.csv", stages, config)
    run_job(memory_source(45), tmp_path / "plain.csv", by_first_pixel, config)
    assert (tmp_path / "staged.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert summary.ok == 45
    assert threads == {"prepare": {"batch-reader"}, "infer": {"classify_0"},
                       "answer": {threading.current_thread().name}}
    pixels = memory_source(12).chunks(0, 12).__next__().pixels
    assert np.array_equal(stages(pixels).class_ids, by_first_pixel(pixels).class_ids)  # a Classifier too
