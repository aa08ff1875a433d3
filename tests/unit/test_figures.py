"""The figure-source check (tests/figures.py): on the repository's documents, and on itself."""

from __future__ import annotations

from pathlib import Path

from tests.figures import REPO, documents, figures, sources, unsourced


def test_every_figure_in_the_docs_is_in_a_results_file():
    missing = [f"{f.path.name}:{f.line}: {f.text}" for f in unsourced(documents(), REPO / "results")]
    assert not missing, f"figures with no source under results/ (python -m tests.figures lists them): {missing}"


def write_case(tmp_path: Path, doc: str, result: str) -> tuple[Path, Path]:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bench.md").write_text(result)
    (tmp_path / "README.md").write_text(doc)
    return tmp_path / "README.md", tmp_path / "results"


def test_a_figure_edited_away_from_its_results_file_is_caught(tmp_path):
    doc, results = write_case(tmp_path, "The service answers 1,275 requests/s at 88.9% of the bare app, in 0.61 ms.\n",
                              "| rps | 1275.4 |\n| share | 0.8891 |\n| p50_s | 0.000612 |\n")
    assert unsourced([doc], results) == []  # thousands separator, percent of a fraction, ms of seconds
    doc.write_text(doc.read_text().replace("1,275", "1,276"))
    assert [f.text for f in unsourced([doc], results)] == ["1,276"]


def test_code_versions_ports_and_small_counts_are_not_figures(tmp_path):
    doc, _ = write_case(tmp_path, "Run `wrk -c 512` on port 3000 with PyTorch 2.14.1, in 2 steps over 28 x 28 "
                                  "images.\n\n```\nlatency 9,999 ms\n```\n", "")
    assert figures(doc) == []


def test_the_real_readme_with_one_figure_changed_fails_the_check(tmp_path):
    readme = (REPO / "README.md").read_text()
    sourced = next(f for f in figures(REPO / "README.md") if f.value > 100)
    lines = readme.splitlines()
    lines[sourced.line - 1] = lines[sourced.line - 1].replace(sourced.text, "987,654,321", 1)
    edited = tmp_path / "README.md"
    edited.write_text("\n".join(lines))
    assert "987,654,321" in {f.text for f in unsourced([edited], REPO / "results")}


def test_sources_names_the_file_that_holds_each_figure(tmp_path):
    doc, results = write_case(tmp_path, "It answers 1,275 requests/s and 4,321 more.\n", "| rps | 1275.4 |\n")
    (results / "other.txt").write_text("4321\n")
    assert {f.text: held for f, held in sources([doc], results).items()} == {"1,275": ["bench.md"],
                                                                             "4,321": ["other.txt"]}
