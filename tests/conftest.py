"""Shared fixtures: the real dataset, loaded once per session; tier markers set by folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def pytest_configure(config):
    """One Prometheus metrics folder for the session, set before any test imports prometheus_client: the client
    chooses at import whether values go to files (what BentoML's /metrics reads) or stay in memory, and a test that
    records a metric first (the gRPC server's, say) would otherwise leave every later /metrics empty."""
    if METRICS_DIR not in os.environ:
        os.environ[METRICS_DIR] = config._fashion_metrics = tempfile.mkdtemp(prefix="fashion-test-metrics-")


def pytest_unconfigure(config):
    made = getattr(config, "_fashion_metrics", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
        os.environ.pop(METRICS_DIR, None)

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


@pytest.fixture(scope="session")
def weak_export(dataset, tmp_path_factory):
    """Another version of the PyTorch model (600 images, 1 epoch, seed 1, no int8): it passes its checksums, warm-up
    and parity, and is less accurate than the quick run's; for loading versions at runtime (service.lifecycle)."""
    from export.pipeline import ExportConfig, export_run
    from training.config import get_preset
    from training.run import train_run

    out = tmp_path_factory.mktemp("weak")
    run = train_run("torch", "best", get_preset("best", epochs=1, limit=600, seed=1), out=out / "runs",
                    data=dataset, progress=False)
    return export_run(run, dataset, out / "artifacts", ExportConfig(quantize=False))


@pytest.fixture(scope="session")
def batch_hold(tmp_path_factory):
    """The session server's batcher gate (FASHION_BATCH_HOLD_FILE): see tests.helpers.held_batcher."""
    return tmp_path_factory.mktemp("batch-gate") / "hold"


@pytest.fixture(scope="session")
def server(exported, bentoml_home, tmp_path_factory, batch_hold):
    """A real ``bentoml serve`` over the quickly trained, exported, registered models."""
    from export.store import register_model
    from tests.helpers import start_server

    for model_dir in exported.values():
        register_model(model_dir)
    instance = start_server(bentoml_home, tmp_path_factory.mktemp("server"),
                            {"FASHION_BATCH_HOLD_FILE": str(batch_hold)})
    try:
        instance.wait_ready()
        yield instance.url
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def service_app(exported, bentoml_home):
    """The service's ASGI app (``FashionClassifier.to_asgi()``) over the quickly trained models, built once.

    BentoML registers its Prometheus metrics in the process-wide registry when an app first starts, so a second app
    in the same process fails (``DuplicateTimeseries``). Each test module enters this one with a TestClient of its
    own (tests.asgi.in_process); every entry creates a new service instance, which reads its settings
    (``FASHION_*``) from the environment then.

    The metrics folder is the session's (:func:`pytest_configure`), as ``bentoml serve`` makes one for its workers.
    """
    from export.store import register_model

    for model_dir in exported.values():
        register_model(model_dir)
    from service.service import FashionClassifier

    return FashionClassifier.to_asgi()
