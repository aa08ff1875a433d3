"""Shared fixtures: the real dataset, loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
