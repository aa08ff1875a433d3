"""Shared fixtures: the real dataset, loaded once per session; tier markers set by folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier, named by its folder: ``pytest -m unit`` runs tests/unit only."""
    for item in items:
        tier = Path(item.path).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def data_dir():
    from fashion.data import find_data_dir

    return find_data_dir(download=False)


@pytest.fixture(scope="session")
def dataset(data_dir):
    from fashion.data import load_fashion_mnist

    return load_fashion_mnist(data_dir)


QUICK = {"epochs": 2, "limit": 3000, "seed": 0}


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory, dataset):
    """One quickly trained run per framework (best preset, 3,000 images, 2 epochs)."""
    from training.config import get_preset
    from training.run import FRAMEWORKS, train_run

    out = tmp_path_factory.mktemp("runs")
    config = get_preset("best", **QUICK)
    return {fw: train_run(fw, "best", config, out=out, data=dataset, progress=False) for fw in FRAMEWORKS}


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory):
    """A throwaway BentoML store for the whole session (never the user's ~/bentoml)."""
    home = tmp_path_factory.mktemp("bentoml")
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("BENTOML_HOME", None)
    else:
        os.environ["BENTOML_HOME"] = previous


@pytest.fixture(scope="session")
def exported(quick_runs, dataset, tmp_path_factory):
    """Both quick runs exported (all artifacts verified); ``{framework: model folder}``."""
    from export.pipeline import export_run

    out = tmp_path_factory.mktemp("artifacts")
    return {fw: export_run(run, dataset, out) for fw, run in quick_runs.items()}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home, log_path, extra_env=None):
    """``bentoml serve`` of the service on a free loopback port; returns (process, base URL)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    port = free_port()
    from clients.bench_http import private_bentoml_home

    # A home of the server's own: a second server on one home breaks the first one's /metrics.
    private = private_bentoml_home(Path(log_path).parent, Path(home) / "models")
    env = {**os.environ, "BENTOML_HOME": str(private), "TF_CPP_MIN_LOG_LEVEL": "3", **(extra_env or {})}
    bentoml_cli = Path(sys.executable).parent / "bentoml"
    log = open(log_path, "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [str(bentoml_cli), "serve", "service.service:FashionClassifier", "--host", "127.0.0.1", "--port", str(port)],
        cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


def store_with(exported, tmp_path, tamper: str | None = None):
    """A BentoML store (a new home under ``tmp_path``) holding copies of the exported models.

    ``tamper``: ``"<framework>/<file>"`` whose byte 100 is flipped first (e.g. ``"tf/model.onnx"``).
    Registered from a separate process: this session's BentoML store is already bound to another home.
    """
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    copies = []
    for framework, model_dir in exported.items():
        copies.append(tmp_path / framework)
        shutil.copytree(model_dir, copies[-1])
    if tamper:
        target = tmp_path / tamper
        payload = bytearray(target.read_bytes())
        payload[100] ^= 0xFF
        target.write_bytes(bytes(payload))
    home = tmp_path / "store"
    subprocess.run([sys.executable, "-c", "import sys; from export.store import register_model as r; "
                    "[r(p) for p in sys.argv[1:]]", *map(str, copies)],
                   env={**os.environ, "BENTOML_HOME": str(home)}, check=True, cwd=Path(__file__).resolve().parents[1])
    return home


def wait_for(url, path, status=200, timeout=120.0, proc=None):
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == status:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}{path} did not answer {status} within {timeout}s")


def stop_server(proc):
    import subprocess

    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def batch_hold(tmp_path_factory):
    """The session server's batcher gate (FASHION_BATCH_HOLD_FILE): see tests.helpers.held_batcher."""
    return tmp_path_factory.mktemp("batch-gate") / "hold"


@pytest.fixture(scope="session")
def server(exported, bentoml_home, tmp_path_factory, batch_hold):
    """A real ``bentoml serve`` over the quickly trained, exported, registered models."""
    from export.store import register_model

    for model_dir in exported.values():
        register_model(model_dir)
    proc, url = start_server(bentoml_home, tmp_path_factory.mktemp("server") / "server.log",
                             {"FASHION_BATCH_HOLD_FILE": str(batch_hold)})
    try:
        wait_for(url, "/readyz", proc=proc)
        yield url
    finally:
        stop_server(proc)
