"""The figure-source check (tests/figures.py): on the repository's documents, and on itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.figures import (
    REPO,
    citations,
    cited_files,
    code_figures,
    documents,
    figures,
    product_files,
    sources,
    unsourced,
)

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


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


def test_a_figure_must_be_in_the_file_its_paragraph_cites_not_just_anywhere(tmp_path):
    doc, results = write_case(tmp_path, "From results/bench.md: 1,275 requests/s.\n\n| route | 4,321 |\n",
                              "| rps | 1275.4 |\n")
    (results / "other.txt").write_text("4321\n")
    # 4,321 is in other.txt, but the table inherits the paragraph's citation of bench.md.
    assert [f.text for f in unsourced([doc], results)] == ["4,321"]
    doc.write_text(doc.read_text().replace("| route |", "| route (results/other.txt) |"))
    assert unsourced([doc], results) == []


def test_citations_are_bound_by_paragraph_list_item_and_section():
    markdown = ("# A\n\nSee results/a.md.\n\nNo citation here.\n* an item citing results/b.md\n"
                "* an item without one\n\n## B\n\nUncited.\n\n```\n# not a heading: results/c.md\n```\n")
    scope = citations(markdown)
    assert scope[3] == scope[5] == ["a.md"]      # a paragraph without citations inherits the last one
    assert scope[6] == scope[7] == ["b.md"]      # a list item is a paragraph of its own
    assert scope[11] == []                       # a heading starts a section with none
    assert scope[14] == ["c.md"]                 # a comment in a code block is not a heading


def test_a_citation_names_a_file_its_siblings_a_folder_or_a_prefix(tmp_path):
    results = tmp_path / "results"
    for name in ("peers-a.md", "peers-a.json", "peers-b.md", "tuning/x.json", "other.md"):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text("1\n")
    def named(*cited: str) -> list[str]:
        return [p.relative_to(results).as_posix() for p in cited_files(list(cited), results)]
    assert named("peers-a.md") == ["peers-a.json", "peers-a.md"]  # the same results in another format
    assert named("peers-") == ["peers-a.json", "peers-a.md", "peers-b.md"]  # results/peers-<machine>.md
    assert named("tuning/") == named("tuning") == ["tuning/x.json"]


def test_the_product_s_comments_and_docstrings_carry_no_figures():
    found = [f"{f.path.relative_to(REPO)}:{f.line}: {f.text}" for path in product_files() for f in code_figures(path)]
    assert not found, f"figures in comments or docstrings (name the results file instead): {found}"


def test_a_measured_figure_in_a_comment_or_docstring_is_caught(tmp_path):
    source = tmp_path / "module.py"
    source.write_text('"""Decoding took 1.3 s and 300 MB (``limit = 0.5 s`` is code)."""\n\n'
                      "# Images per call: the model time (about 2 ms for 256) stays small; 28 x 28 pixels.\n"
                      "BATCH = 256  # 8 MiB (a fact of the design), 350-430 ms\n")
    found = [(f.line, f.text) for f in code_figures(source)]
    assert found == [(1, "1.3"), (1, "300"), (3, "2"), (4, "350"), (4, "430")]
