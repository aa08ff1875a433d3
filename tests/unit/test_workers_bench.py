"""benchmark.workers without servers: the configuration syntax, the server's environment, medians, the report."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmark import workers
from benchmark.workers import Setup


def test_a_setup_is_workers_x_threads():
    assert workers.parse_setup("2x1") == Setup(2, 1)
    assert workers.parse_setup("1X2") == Setup(1, 2)


@pytest.mark.parametrize("text", ["2", "x1", "2x", "0x1", "2x0", "-1x1", "twoxone", "2x1x1"])
def test_a_malformed_setup_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="<workers>x<threads>"):
        workers.parse_setup(text)


def test_workers_reach_bentoml_through_its_json_override_and_threads_through_fashion_threads():
    env = Setup(2, 1).env()
    assert json.loads(env["BENTOML_CONFIG_OVERRIDES"]) == {"services": {"fashion-classifier": {"workers": 2}}}
    assert (env["FASHION_THREADS"], env["FASHION_BACKENDS"]) == ("1", "onnx-torch")


def test_the_override_names_the_service_as_declared():
    from service.service import FashionClassifier

    assert FashionClassifier.name == workers.SERVICE_NAME


def row(setup: Setup, rep: int, images: float, status: str = "200") -> dict:
    return {"workers": setup.workers, "threads": setup.threads, "route": "v2 binary", "connections": 16,
            "rep": rep, "images_per_s": images, "rps": images, "server_cpu_cores": 1.5, "wrk_cpu_cores": 0.1,
            "p50_us": 1000, "p99_us": 4000, "statuses": {status: 5}, "socket_errors": 0}


def test_medians_per_setup_with_spread_and_errors_in_the_report():
    rows = [row(Setup(1, 2), rep, images) for rep, images in enumerate([100, 300, 200])]
    rows += [row(Setup(2, 1), 0, 50, status="503")]
    one, two = workers.medians(rows)
    assert (one["images_per_s"], one["spread"], one["reps"], one["non_2xx"]) == (200, [100, 300], 3, 0)
    assert (two["workers"], two["non_2xx"]) == (2, 5)
    text = workers.render({"machine": "m", "argv": [], "when": "now", "seconds": 5, "reps": 3, "cores": 2,
                           "note": "", "medians": [one, two]})
    assert "| 1 x 2 | 200 (100-300), 1.0 ms, 4.0 ms, 1.50 |" in text
    assert "| 2 x 1 | 50 (50-50), 1.0 ms, 4.0 ms, 1.50 (5 errors) |" in text
