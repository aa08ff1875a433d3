"""The import graph of our packages: no cycles, ``fashion/`` is the hub, the product never imports the lab.

Every absolute import of every module counts, the lazy ones inside functions and those under
``if TYPE_CHECKING:`` too: a cycle that a lazy or type-only import hides is still two modules that cannot be
understood apart (service.parity and service.registry were one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("fashion", "training", "export", "service", "clients")
LAB = ("benchmark", "reliability")
PACKAGES = PRODUCT + LAB


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(source: str) -> set[str]:
    """Every dotted name an absolute import in ``source`` may bring in (``from a import b`` gives ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    modules = module_files(root, packages)

    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        found = {ours(name) for name in imported_names(path.read_text())}
        graph[module] = found - {None, module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def package_of(module: str) -> str:
    """The top-level package; the lab's two folders count as one (the lab)."""
    top = module.split(".")[0]
    return "lab" if top in LAB else top


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Top-level package -> the other top-level packages its modules import."""
    packages: dict[str, set[str]] = {package_of(m): set() for m in graph}
    for module, imports in graph.items():
        packages[package_of(module)].update(package_of(m) for m in imports)
    return {package: imports - {package} for package, imports in packages.items()}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO)


def test_no_module_import_cycle(graph):
    assert cycles(graph) == []


def test_no_package_import_cycle(graph):
    assert cycles(package_graph(graph)) == []


def test_fashion_imports_no_other_package_of_ours(graph):
    assert package_graph(graph)["fashion"] == set()


def test_the_product_never_imports_the_lab(graph):
    assert {module: sorted(m for m in imports if package_of(m) == "lab") for module, imports in graph.items()
            if module.split(".")[0] in PRODUCT and any(package_of(m) == "lab" for m in imports)} == {}


def write_package(root: Path, name: str, modules: dict[str, str]) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / name / f"{module}.py").write_text(source)


def test_the_checks_see_a_lazy_cycle_and_an_import_from_the_hub(tmp_path):
    write_package(tmp_path, "fashion", {"core": "def f():\n    from service.api import g\n    return g\n"})
    write_package(tmp_path, "service", {
        "api": "from fashion.core import f\nfrom service import registry\n",
        "registry": "import service.api\nfrom service import typed\n",
        "typed": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from service.registry import x\n",
    })
    found = import_graph(tmp_path, ("fashion", "service"))
    assert sorted(cycles(found)) == [["fashion.core", "service.api", "service.registry", "service.typed"]]
    assert package_graph(found) == {"fashion": {"service"}, "service": {"fashion"}}
    assert cycles(package_graph(found)) == [["fashion", "service"]]
