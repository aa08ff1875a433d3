"""Every relative link in README.md, SECURITY.md and docs/*.md points at a file that exists, and at a heading there;
the product's comments and docstrings name only files the repository holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.figures import PRODUCT, code_comments

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "SECURITY.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text())
    titles = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


def relative_links(page: Path) -> list[str]:
    """Links outside code blocks that are neither URLs nor mail addresses."""
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.name}")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 120


# A source path named in prose or code spans: `tests/e2e/test_v2.py`, service/batcher.py, training/presets.json.
SOURCE_PATH = re.compile(r"\b(?:tests|service|clients|fashion|benchmark|reliability|training|export|deploy)"
                         r"/[\w/.-]*\.(?:py|json|yaml|js|html)\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_source_path_a_page_names_exists(page):
    # Files move (the test tiers did); a page naming the old place sends readers nowhere.
    missing = sorted({p for p in SOURCE_PATH.findall(page.read_text()) if not (REPO / p).exists()})
    assert not missing, f"{page.name} names files that do not exist: {missing}"


# A file of this repository named in a comment or docstring: a path under one of its folders, or a top-level page.
REPO_REFERENCE = re.compile(r"(?<![\w/.-])((?:results|docs|tests|service|clients|fashion|benchmark|reliability"
                            r"|training|export|deploy)/[\w/.<>*-]*[\w>*]|(?:[\w.-]+/)*[A-Z][A-Z_]+\.md)\b")
# A reference to the project's issue tracker, which is not in the repository.
ISSUE = re.compile(r"\bissue \d+")


def missing_references(path: Path, repo: Path = REPO) -> list[str]:
    """References in the comments and docstrings of ``path`` to files that are not in ``repo``, and to issues."""
    found = []
    for line, text in code_comments(path.read_text()):
        for match in ISSUE.finditer(text):
            found.append(f"{line}: {match.group(0)}")
        for match in REPO_REFERENCE.finditer(text):
            name = match.group(1).rstrip(".")
            # A placeholder or a wildcard (results/peers-<machine>.md) names the files that start alike.
            prefix = re.split(r"[<*]", name)[0]
            exists = any(repo.glob(prefix + "*")) if prefix != name else (repo / name).exists()
            if not exists:
                found.append(f"{line}: {name}")
    return found


@pytest.mark.parametrize("package", PRODUCT)
def test_comments_and_docstrings_name_only_what_the_repository_holds(package):
    missing = {str(path.relative_to(REPO)): refs for path in sorted((REPO / package).rglob("*.py"))
               if (refs := missing_references(path))}
    assert not missing, f"references outside the repository in comments or docstrings: {missing}"


def test_the_reference_check_names_a_missing_file_and_an_issue(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "tasks.md").write_text("")
    source = tmp_path / "module.py"
    source.write_text('"""See docs/tasks.md and results/peers-<machine>.md (issue 16)."""\n'
                      "X = 1  # measured in ENVIRONMENT.md, explained in docs/tasks.md.\n")
    assert missing_references(source, tmp_path) == ["1: issue 16", "1: results/peers-<machine>.md",
                                                    "2: ENVIRONMENT.md"]
