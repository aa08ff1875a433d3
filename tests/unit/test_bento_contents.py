"""What a built Bento carries: the product, never the lab or its results.

Each profile's ``include``/``exclude`` is matched the way ``bentoml build`` matches it (gitwildmatch patterns
from pathspec, bentoml/_internal/bento/bento.py in 1.4), against every file of the lab (``benchmark/``,
``reliability/``) and of ``results/`` in this checkout: none may ship.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pathspec import PathSpec

from tests.bento_check import PROFILES

REPO = Path(__file__).resolve().parents[2]
# Top-level folders that never ship: the lab and what it (and the other commands) measured.
NEVER_SHIPPED = ("benchmark", "reliability", "results")


def ships(bentofile: dict, path: str) -> bool:
    """Whether ``bentoml build`` would copy ``path`` (relative to the build context) into the Bento."""
    include = PathSpec.from_lines("gitwildmatch", bentofile.get("include") or ["*"])
    exclude = PathSpec.from_lines("gitwildmatch", bentofile.get("exclude") or [])
    return include.match_file(path) and not exclude.match_file(path)


def shipped_lab_files(root: Path, bentofile: dict) -> list[str]:
    """Files under :data:`NEVER_SHIPPED` in ``root`` that the bentofile would put in the Bento."""
    found = []
    for folder in NEVER_SHIPPED:
        for path in sorted((root / folder).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and "__pycache__" not in relative and ships(bentofile, relative):
                found.append(relative)
    return found


@pytest.mark.parametrize("profile", PROFILES)
def test_no_lab_or_results_file_ships(profile):
    bentofile = yaml.safe_load((REPO / PROFILES[profile]).read_text())
    assert shipped_lab_files(REPO, bentofile) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_the_product_ships(profile):
    """The check above is not vacuous: the same matcher ships the service and the core."""
    bentofile = yaml.safe_load((REPO / PROFILES[profile]).read_text())
    assert ships(bentofile, "service/service.py") and ships(bentofile, "fashion/contract.py")


@pytest.mark.parametrize("pattern", ["results/benchmark-*.json", "benchmark/*.py", "reliability/**"])
def test_the_check_names_a_lab_file_an_include_would_ship(tmp_path, pattern):
    for folder in NEVER_SHIPPED:
        (tmp_path / folder).mkdir()
    (tmp_path / "results" / "benchmark-x.json").write_text("{}")
    (tmp_path / "benchmark" / "bench.py").write_text("")
    (tmp_path / "reliability" / "harness.py").write_text("")
    shipped = shipped_lab_files(tmp_path, {"include": ["service/*.py", pattern], "exclude": ["tests/"]})
    assert len(shipped) == 1 and shipped[0].startswith(pattern.split("/")[0])
