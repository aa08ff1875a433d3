"""The service serves what its Bento profile carries: backends whose runtime modules are missing are not loaded,
/model_info and refusals say why, and deciding so imports no framework (the onnx profile has none)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from fashion import backends
from service.config import ConfigError, ServiceConfig
from service.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]
ONNX_BACKENDS = ("onnx-torch", "onnx-tf", "onnx-int8")
# torch and TensorFlow absent, as in a venv of the onnx profile's requirements only: a None in sys.modules makes
# `import torch` raise ImportError and importlib.util.find_spec("torch") answer None.
WITHOUT_FRAMEWORKS = "import sys\nsys.modules.update(torch=None, tensorflow=None)\n"


@pytest.fixture
def without(monkeypatch):
    """Make the named modules absent for the test (``import`` fails, ``importlib.util.find_spec`` finds none)."""
    def hide(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
    return hide


def test_backends_whose_framework_is_missing_are_not_configured(without):
    without("torch", "tensorflow")
    config = ServiceConfig.from_env({})
    assert config.backends == config.installed == ONNX_BACKENDS
    assert config.why_not_installed("torch") == "this environment has no torch"
    assert config.why_not_installed("savedmodel") == "this environment has no tensorflow"
    assert config.why_not_installed("onnx-tf") is None


def test_a_runtime_whose_code_the_bento_leaves_out_is_not_installed(without):
    without("fashion.backends.savedmodel_runtime")
    assert ServiceConfig.from_env({}).backends == ("onnx-torch", "onnx-tf", "torch", "onnx-int8")


def test_everything_installed_configures_every_backend():
    assert all(importlib.util.find_spec(m) for modules in backends.RUNTIME_MODULES.values() for m in modules)
    config = ServiceConfig.from_env({})
    assert config.backends == tuple(backends.BACKENDS) and config.not_installed == ()


def test_naming_a_backend_whose_runtime_is_missing_is_a_clear_config_error(without):
    without("torch", "tensorflow")
    installed = r"installed: \['onnx-torch', 'onnx-tf', 'onnx-int8'\]"
    with pytest.raises(ConfigError, match=r"\['torch'\].*no torch.*" + installed):
        ServiceConfig.from_env({"FASHION_BACKENDS": "onnx-torch,torch"})


def test_no_runtime_at_all_is_a_config_error(without):
    without("onnxruntime", "torch", "tensorflow")
    with pytest.raises(ConfigError, match="no backend can run here"):
        ServiceConfig.from_env({})


def test_model_info_and_refusals_name_the_loaded_backends_and_why_not_the_others(without):
    without("torch", "tensorflow")
    registry = ModelRegistry(ServiceConfig.from_env({}))
    info = registry.info()
    assert info["installed_backends"] == list(ONNX_BACKENDS)
    assert info["not_installed"] == {"torch": "this environment has no torch",
                                     "savedmodel": "this environment has no tensorflow"}
    registry.backends = dict.fromkeys(ONNX_BACKENDS)  # as if loaded: only the names matter here
    loaded = "loaded: ['onnx-int8', 'onnx-tf', 'onnx-torch']"
    for name, module in (("torch", "torch"), ("savedmodel", "tensorflow")):
        with pytest.raises(KeyError) as refused:
            registry.get(name)
        assert refused.value.args[0] == f"backend {name!r} is not installed in this server " \
                                        f"(this environment has no {module}); {loaded}"
    assert registry.why_not_loaded("nope") == f"unknown backend 'nope'; {loaded}"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)


def test_deciding_what_is_installed_imports_no_framework():
    done = run_python("import sys\nfrom service.config import ServiceConfig\n"
                      "config = ServiceConfig.from_env({})\n"
                      "print(len(config.backends), [m for m in ('torch', 'tensorflow', 'onnxruntime') "
                      "if m in sys.modules])")
    assert done.stdout.split() == ["5", "[]"], done.stderr[-2000:]


def test_the_service_imports_without_torch_or_tensorflow():
    """What the onnx profile's worker imports, in an interpreter where both frameworks are absent."""
    done = run_python(WITHOUT_FRAMEWORKS + "import service.service\nfrom service.config import ServiceConfig\n"
                      "print(ServiceConfig.from_env({}).backends)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(ONNX_BACKENDS)
