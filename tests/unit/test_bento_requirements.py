"""The Bento stands on its own: every distribution the code it ships imports is among its Python packages.

Reads bentofile.yaml, lists the files its ``include``/``exclude`` put in the Bento, collects every absolute
import in them (lazy ones inside functions too), maps modules to distributions with
``importlib.metadata.packages_distributions()`` and checks each against ``python.packages``.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OUR_PACKAGES = {"service", "fashion", "__future__"}
# Imported by BentoML's server (uvicorn) only when installed, so no import of ours names them.
SERVER_EXTRAS = {"uvloop", "httptools"}


def canonical(name: str) -> str:
    """A distribution name as PEP 503 normalises it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(bentofile: dict) -> set[str]:
    """Distribution names in ``python.packages`` (without version, extras or markers)."""
    return {canonical(re.split(r"[\s\[=<>!~;]", spec.strip(), maxsplit=1)[0])
            for spec in bentofile["python"]["packages"]}


def shipped_python_files(root: Path, bentofile: dict) -> list[Path]:
    """The .py files ``include`` selects and ``exclude`` does not drop (paths relative to ``root``)."""
    files = {p.relative_to(root) for pattern in bentofile["include"] for p in root.glob(pattern) if p.suffix == ".py"}
    def excluded(path: Path) -> bool:
        return any(str(path).startswith(x) if x.endswith("/") else fnmatch.fnmatch(str(path), x)
                   for x in bentofile.get("exclude", []))
    return sorted(p for p in files if not excluded(p))


def imported_modules(source: str) -> set[str]:
    """Dotted names of every absolute import in ``source``."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def undeclared_imports(root: Path) -> dict[str, list[str]]:
    """``{distribution: [files importing it]}`` for every third-party import the Bento's packages leave out."""
    bentofile = yaml.safe_load((root / "bentofile.yaml").read_text())
    have, owners = declared(bentofile), importlib.metadata.packages_distributions()
    missing: dict[str, list[str]] = {}
    for path in shipped_python_files(root, bentofile):
        for module in imported_modules((root / path).read_text()):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in OUR_PACKAGES:
                continue
            dists = {canonical(d) for d in owners.get(top, [top])}
            if not dists & have:
                for dist in sorted(dists):
                    missing.setdefault(dist, []).append(str(path))
    for extra in sorted(SERVER_EXTRAS - have):
        missing.setdefault(extra, []).append("(BentoML's server)")
    return missing


def test_every_import_of_the_bento_is_declared():
    missing = undeclared_imports(REPO)
    assert not missing, f"imported but not in bentofile.yaml's python.packages: {missing}"


def test_every_declared_package_is_pinned_exactly():
    specs = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    assert all("==" in spec for spec in specs), [s for s in specs if "==" not in s]


def test_the_checker_names_onnx_when_it_is_left_out(tmp_path):
    for name in ("service", "fashion"):
        shutil.copytree(REPO / name, tmp_path / name)
    text = (REPO / "bentofile.yaml").read_text()
    assert "\n    - onnx==" in text
    (tmp_path / "bentofile.yaml").write_text(re.sub(r"\n    - onnx==[^\n]*", "", text))
    missing = undeclared_imports(tmp_path)
    assert list(missing) == ["onnx"] and missing["onnx"] == ["fashion/backends/onnx_runtime.py"]


def test_the_checker_sees_a_new_undeclared_import(tmp_path):
    for name in ("service", "fashion"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "bentofile.yaml", tmp_path / "bentofile.yaml")
    (tmp_path / "service" / "extra.py").write_text("def f():\n    import yaml\n    return yaml\n")
    assert "pyyaml" in undeclared_imports(tmp_path)


@pytest.mark.parametrize("dist", ["bentoml", "onnx", "uvloop", "httptools"])
def test_the_tested_version_is_the_pinned_one(dist):
    specs = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    pinned = next(s for s in specs if canonical(re.split(r"[\s\[=]", s, maxsplit=1)[0]) == dist)
    assert pinned.split("==")[1].split()[0] == importlib.metadata.version(dist)
