"""tests/timing.py: failed tests are kept by name, and the README sentence says what the report says."""

from __future__ import annotations

import pytest

from tests.figures import unsourced
from tests.timing import README_MARKERS, TierRun, readme_sentence, report, update_readme

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product

RUNS = [TierRun("unit", 42.0, "280 passed in 41.2s", ()),
        TierRun("e2e", 250.0, "1 failed, 99 passed in 249.0s",
                ("FAILED tests/e2e/test_tasks.py::test_cancel_lands_part_way",))]


def test_the_report_names_every_failed_test_and_times_each_tier():
    text = report(RUNS, None, "python -m tests.timing")
    assert "- FAILED tests/e2e/test_tasks.py::test_cancel_lands_part_way" in text
    assert "| unit | 42 | 0.7 |" in text and "| e2e | 250 | 4.2 |" in text and "| all | 292 | 4.9 |" in text


def test_the_readme_sentence_is_rewritten_between_its_markers_and_quotes_only_the_report(tmp_path):
    readme = tmp_path / "README.md"
    start, end = README_MARKERS
    readme.write_text(f"# x\n\n{start}old words{end}\n\nmore\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "test-suite.md").write_text(report(RUNS, None, "python -m tests.timing"))
    assert update_readme(readme, readme_sentence(RUNS))
    text = readme.read_text()
    assert "old words" not in text and "4.9 minutes" in text and "1 failed" in text and text.endswith("more\n")
    assert unsourced([readme], tmp_path / "results") == []
