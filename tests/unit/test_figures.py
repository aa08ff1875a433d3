"""The figure-source check (tests/figures.py): on the repository's documents, and on itself."""

from __future__ import annotations

from pathlib import Path

from tests.figures import REPO, documents, figures, unsourced

# Debt, not exemptions: figures that were in the docs before this check and that no results file holds yet
# (the v2/task tables and the --local figures need their benchmark commands, which now write results files,
# to be run again). The check fails on any figure not listed here, and on an entry that
# has become sourced or gone (so this list can only shrink).
KNOWN_UNSOURCED = {
    ("benchmark.md", "152,000"),  # docs/benchmark.md line 37
    ("benchmark.md", "145,000"),  # docs/benchmark.md line 40
    ("benchmark.md", "506,000"),  # docs/benchmark.md line 41
    ("benchmark.md", "9,600"),  # docs/benchmark.md line 50
    ("clients.md", "505,000"),  # docs/clients.md line 61
    ("kserve-v2.md", "18.3"),  # docs/kserve-v2.md line 120
    ("kserve-v2.md", "36.7"),  # docs/kserve-v2.md line 120
    ("kserve-v2.md", "29.6"),  # docs/kserve-v2.md line 120
    ("serving.md", "4,000,000"),  # docs/serving.md line 116
    ("serving.md", "0.9980"),  # docs/serving.md line 248
    ("serving.md", "0.9844"),  # docs/serving.md line 249
    ("serving.md", "192"),  # docs/serving.md line 249 (an image index; matched an old peers proof run by chance)
    ("tasks.md", "91.6"),  # docs/tasks.md line 80
    ("tasks.md", "37,313"),  # docs/tasks.md line 80
    ("tasks.md", "89,419"),  # docs/tasks.md line 81
    ("tasks.md", "113.8"),  # docs/tasks.md line 82
    ("tasks.md", "48,387"),  # docs/tasks.md line 82
    ("tasks.md", "47,133"),  # docs/tasks.md line 83
    ("tasks.md", "120.1"),  # docs/tasks.md line 84
    ("tasks.md", "24,440"),  # docs/tasks.md line 84
    ("tasks.md", "22,463"),  # docs/tasks.md line 85
    ("training.md", "0.896"),  # docs/training.md line 51
    ("training.md", "0.9011"),  # docs/training.md line 59
}


def test_every_figure_in_the_docs_is_in_a_results_file():
    missing = {(figure.path.name, figure.text): figure for figure in unsourced(documents(), REPO / "results")}
    new = [f"{f.path.name}:{f.line}: {f.text}" for key, f in missing.items() if key not in KNOWN_UNSOURCED]
    assert not new, f"figures with no source under results/ (python -m tests.figures lists them): {new}"
    stale = KNOWN_UNSOURCED - set(missing)
    assert not stale, f"now sourced or gone, remove from KNOWN_UNSOURCED: {sorted(stale)}"


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
    sourced = next(f for f in figures(REPO / "README.md") if f.text not in {t for _, t in KNOWN_UNSOURCED}
                   and f.value > 100)
    lines = readme.splitlines()
    lines[sourced.line - 1] = lines[sourced.line - 1].replace(sourced.text, "987,654,321", 1)
    edited = tmp_path / "README.md"
    edited.write_text("\n".join(lines))
    assert "987,654,321" in {f.text for f in unsourced([edited], REPO / "results")}
