"""Pieces of the batch benchmark (benchmark.batch) that decide what it measures: the task uploads and polls."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from benchmark.batch import journal_done, make_shards, others_share, poll_delay, resume_lines, shared_note, task_body

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def test_a_task_upload_is_the_npy_of_its_rows(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    source = tmp_path / "images.npy"
    np.save(source, images)
    expected = io.BytesIO()
    np.save(expected, images[17:40])
    assert task_body(source, 17, 23) == expected.getvalue()


@pytest.mark.parametrize(("view", "delay"), [
    ({"done": 0, "total": 100_000, "seconds": 0.3}, 0.05),  # no rate yet
    ({"done": 10_000, "total": 100_000, "seconds": 1.0}, 0.5),  # 9 s to go: capped
    ({"done": 90_000, "total": 100_000, "seconds": 1.8}, 0.1),  # 0.2 s to go: half of it
    ({"done": 99_999, "total": 100_000, "seconds": 2.0}, 0.02),  # about done: the floor
])
def test_progress_is_polled_at_half_the_time_a_task_still_needs(view, delay):
    assert poll_delay(view) == pytest.approx(delay)


def test_the_report_says_how_much_of_the_machine_others_took():
    assert others_share((0.0, 0.0, 0.0), (10.0, 15.0, 5.0)) == pytest.approx(1.0 / os.cpu_count())
    note = shared_note({"others_cpu_share": 0.4})
    assert "shared machine" in note and "rerun" in note
    assert "shared" not in shared_note({"others_cpu_share": 0.01})
    assert shared_note({}) == ""


def test_the_kill_point_is_read_from_the_journal_s_last_complete_line(tmp_path):
    journal = tmp_path / "out.csv.journal"
    assert journal_done(journal) == 0  # the job has not written a chunk yet
    journal.write_bytes(b'{"done":1024,"out_bytes":10}\n{"done":2048,"out_bytes":20}\n{"done":30')
    assert journal_done(journal) == 2048


def test_the_resume_check_reports_a_difference_as_a_failure():
    check = {"format": "csv", "images": 1_000_000, "seed": 7, "killed_after_s": 3.25, "killed_at_images": 421_888,
             "bytes": 70_000_000, "resumed_peak_rss_mib": 140.0}
    same = resume_lines([{**check, "identical": True}])
    different = resume_lines([{**check, "identical": False}])
    assert "| csv | 3.25 s | 421,888 | 70,000,000 | yes | 140 |" in same
    assert "| csv | 3.25 s | 421,888 | 70,000,000 | **no** | 140 |" in different
    assert resume_lines([]) == []


def test_the_ray_mode_reads_every_row_once_in_order_from_its_shards(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (53, 28, 28), dtype=np.uint8)
    source = tmp_path / "images.npy"
    np.save(source, images)
    shards = make_shards(source, 4)
    parts = sorted(shards.glob("part-*.npy"))
    assert len(parts) == 4 and np.array_equal(np.concatenate([np.load(p) for p in parts]), images)
    assert make_shards(source, 4) == shards  # kept between runs
