"""Every relative link in README.md, SECURITY.md and docs/*.md points at a file that exists, and at a heading there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


# A source path named in prose or code spans: `tests/e2e/test_v2.py`, service/batcher.py, training/presets.json.
SOURCE_PATH = re.compile(r"\b(?:tests|service|clients|fashion|benchmark|reliability|training|export|deploy)"
                         r"/[\w/.-]*\.(?:py|json|yaml|js|html)\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_source_path_a_page_names_exists(page):
    # Files move (the test tiers did); a page naming the old place sends readers nowhere.
    missing = sorted({p for p in SOURCE_PATH.findall(page.read_text()) if not (REPO / p).exists()})
    assert not missing, f"{page.name} names files that do not exist: {missing}"
