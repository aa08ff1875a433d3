"""What ``pip install fashion-serve[client]`` gives a user: the client and batch CLI with no framework.

A clean venv resolves the real ``client`` extra (pip's cache is used; nothing is installed with
``--no-deps``), then its ``fashion-classify`` console script classifies against a real server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("torch", "tensorflow", "onnxruntime", "bentoml")
SOURCE_PARTS = ("pyproject.toml", "README.md", "fashion", "training", "export", "service", "clients", "benchmark")
INSTALL_TIMEOUT_S = 900  # a cold pip cache downloads numpy, pillow and httpx: seconds, not minutes


def copy_source(target: Path) -> Path:
    """The package source alone, so the build writes nothing into the checkout."""
    target.mkdir(parents=True)
    for part in SOURCE_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, target / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / part)
    return target


def clean_env() -> dict[str, str]:
    """This process's environment without what would let the venv see the checkout or the shared venv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A fresh venv holding ``.[client]`` and whatever pip resolved for it."""
    root = tmp_path_factory.mktemp("client-install")
    source = copy_source(root / "src")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    done = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", f"{source}[client]"],
                          env=clean_env(), cwd=root, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, f"pip install .[client] failed:\n{done.stdout}\n{done.stderr}"
    return env_dir


def test_client_extra_installs_no_framework(client_venv):
    probe = ("import importlib.util, json, sys; "
             "print(json.dumps({m: bool(importlib.util.find_spec(m)) for m in sys.argv[1:]}))")
    done = subprocess.run([str(client_venv / "bin" / "python"), "-c", probe, *FRAMEWORKS, "clients", "httpx"],
                          env=clean_env(), cwd=client_venv, capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(done.stdout)
    assert found == {**dict.fromkeys(FRAMEWORKS, False), "clients": True, "httpx": True}


def test_client_only_install_classifies_against_the_server(client_venv, server):
    sample = REPO / "fashion" / "samples" / "9-ankle-boot-test0.png"
    done = subprocess.run([str(client_venv / "bin" / "fashion-classify"), "--url", server, "classify", "--json",
                           str(sample)], env=clean_env(), cwd=client_venv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (answer,) = json.loads(done.stdout)
    # The quick test models are weak, so the check is agreement with the server's own answer, not the true label.
    direct = httpx.post(f"{server}/classify", files={"images": sample.read_bytes()}, timeout=60).json()
    direct = direct[0] if isinstance(direct, list) else direct
    assert (answer["label"], answer["backend"]) == (direct["label"], direct["backend"])
