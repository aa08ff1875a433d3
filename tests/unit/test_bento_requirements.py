"""Each Bento profile stands on its own: every distribution the code it ships imports is among its Python packages.

For each profile's bentofile (tests.bento_check.PROFILES: ``full``, ``onnx`` and its GPU variant), lists the files
its ``include``/``exclude`` put in the Bento, collects every absolute import in them (lazy ones inside functions
too), maps modules to distributions with ``importlib.metadata.packages_distributions()`` and checks each against
that profile's ``python.packages``.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from fashion.backends import RUNTIME_MODULES
from tests.bento_check import PROFILES

REPO = Path(__file__).resolve().parents[2]
OUR_PACKAGES = {"service", "fashion", "__future__"}
# Imported by BentoML's server (uvicorn) only when installed, so no import of ours names them.
SERVER_EXTRAS = {"uvloop", "httptools"}
# Distributions that install the same module: this venv has onnxruntime-gpu, the onnx profile the CPU wheel.
SAME_MODULES = {"onnxruntime-gpu": "onnxruntime"}


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
    """Dotted names of every absolute import in ``source``, and of every module it locates by a literal name
    with ``find_spec`` to read its files (fashion.backends.onnx_runtime.onnx_schema)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "find_spec"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


@functools.cache
def owners() -> dict[str, list[str]]:
    """Top-level module -> the distributions installing it, in this venv (read once: it scans every one)."""
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    """The distributions that may provide top-level ``module`` (canonical names)."""
    dists = {canonical(d) for d in owners().get(module, [module])}
    return dists | {SAME_MODULES[d] for d in dists if d in SAME_MODULES}


def undeclared_imports(root: Path, bentofile_name: str = "bentofile.yaml") -> dict[str, list[str]]:
    """``{distribution: [files importing it]}`` for every third-party import the Bento's packages leave out."""
    bentofile = yaml.safe_load((root / bentofile_name).read_text())
    have = declared(bentofile)
    missing: dict[str, list[str]] = {}
    for path in shipped_python_files(root, bentofile):
        for module in imported_modules((root / path).read_text()):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in OUR_PACKAGES:
                continue
            dists = distributions_of(top)
            if not dists & have:
                for dist in sorted(dists):
                    missing.setdefault(dist, []).append(str(path))
    for extra in sorted(SERVER_EXTRAS - have):
        missing.setdefault(extra, []).append("(BentoML's server)")
    return missing


def load(bentofile_name: str, root: Path = REPO) -> dict:
    return yaml.safe_load((root / bentofile_name).read_text())


@pytest.mark.parametrize("profile", PROFILES)
def test_every_import_of_the_bento_is_declared(profile):
    missing = undeclared_imports(REPO, PROFILES[profile])
    assert not missing, f"imported but not in {PROFILES[profile]}'s python.packages: {missing}"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_declared_package_is_pinned_exactly(profile):
    specs = load(PROFILES[profile])["python"]["packages"]
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


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_the_onnx_profile_fails_when_its_service_imports_a_framework(tmp_path, framework):
    """The onnx profile's service must not pull in torch or TensorFlow, even lazily: the checker names it."""
    for name in ("service", "fashion"):
        shutil.copytree(REPO / name, tmp_path / name)
    for profile in ("full", "onnx"):
        shutil.copy(REPO / PROFILES[profile], tmp_path / PROFILES[profile])
    (tmp_path / "service" / "extra.py").write_text(f"def f():\n    import {framework}\n    return {framework}\n")
    assert undeclared_imports(tmp_path, PROFILES["onnx"]) == {framework: ["service/extra.py"]}
    assert undeclared_imports(tmp_path, PROFILES["full"]) == {}


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_ships_the_runtimes_whose_frameworks_it_declares(profile):
    """A runtime's code is in the Bento exactly when the frameworks it imports are among the packages; the
    service serves the backends of the runtimes it finds (fashion.backends.missing_modules)."""
    bentofile = load(PROFILES[profile])
    shipped = {path.stem.removesuffix("_runtime") for path in shipped_python_files(REPO, bentofile)
               if path.parent == Path("fashion/backends") and path.stem.endswith("_runtime")}
    carried = {runtime for runtime, modules in RUNTIME_MODULES.items()
               if all(distributions_of(module) & declared(bentofile) for module in modules)}
    assert shipped == carried == ({"onnx"} if profile.startswith("onnx") else set(RUNTIME_MODULES))


@pytest.mark.parametrize("profile", [p for p in PROFILES if p != "full"])
def test_the_profiles_serve_the_same_service_and_files(profile):
    """Only the runtimes differ: the same service, files and the same pins for what both carry."""
    full, other = load(PROFILES["full"]), load(PROFILES[profile])
    assert other["service"] == full["service"] and other["include"] == full["include"]
    assert set(other["exclude"]) - set(full["exclude"]) == {"fashion/backends/torch_runtime.py",
                                                             "fashion/backends/savedmodel_runtime.py"}
    pins = {canonical(s.split("==")[0].split("[")[0]): s.split("==")[1].split()[0]
            for s in full["python"]["packages"]}
    for spec in other["python"]["packages"]:
        name, version = canonical(spec.split("==")[0].split("[")[0]), spec.split("==")[1].split()[0]
        assert pins.get(name, pins.get(f"{name}-gpu", version)) == version, spec
    assert other["name"] == f"fashion-classifier-{profile}"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("dist", ["bentoml", "onnx", "uvloop", "httptools", "onnxruntime"])
def test_the_tested_version_is_the_pinned_one(profile, dist):
    specs = load(PROFILES[profile])["python"]["packages"]
    pinned = {canonical(re.split(r"[\s\[=]", s, maxsplit=1)[0]): s.split("==")[1].split()[0] for s in specs}
    # The tests run onnxruntime-gpu (on the CPU here); the onnx profile's CPU wheel is the same release.
    version = pinned.get(dist) or pinned[f"{dist}-gpu"]
    installed = dist if dist != "onnxruntime" else "onnxruntime-gpu"
    assert version == importlib.metadata.version(installed)
