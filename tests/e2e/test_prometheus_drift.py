"""A real Prometheus on 127.0.0.1 scrapes a served worker while it answers clothing, then a stream of digits, then
clothing again: through Prometheus's HTTP API, the drift alert of deploy/prometheus/alerts.yml fires, then clears.

The rules are the shipped ones with their ``for`` durations set to zero (the durations themselves are tested with
``promtool test rules``, tests/unit/test_deploy_monitoring.py) and a window of a hundred images, refreshed often.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from benchmark.harness import answers_ok, free_port, start
from fashion.imaging import encode_png
from tests.helpers import store_with, wait_until

REPO = Path(__file__).resolve().parents[2]
ALERT = "FashionClassMixDrift"  # the quick test models' detector flags too few digits for the "not clothing" one
WINDOW = 100
HANG_GUARD_S = 120  # scrapes and evaluations every second: the alert changes within seconds

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="needs prometheus (Debian's prometheus package; .ci/run installs it)")


def write_prometheus_config(folder: Path, target: str) -> Path:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    (folder / "alerts.yml").write_text(yaml.safe_dump(rules))
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(folder / "alerts.yml")],
              "scrape_configs": [{"job_name": "fashion-serve", "static_configs": [{"targets": [target]}]}]}
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def digits(count: int) -> np.ndarray:
    """scikit-learn's bundled handwritten digits (8 x 8, 0-16), scaled to 0-255 and upscaled to 28 x 28."""
    from PIL import Image
    from sklearn.datasets import load_digits

    small = (load_digits().images[:count] * (255 / 16)).round().astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(image).resize((28, 28), Image.BILINEAR)) for image in small])


def upload(url: str, images: np.ndarray) -> None:
    for start_at in range(0, len(images), 50):
        files = [("images", (f"{i}.png", encode_png(image), "image/png"))
                 for i, image in enumerate(images[start_at:start_at + 50])]
        assert httpx.post(f"{url}/classify", files=files, timeout=60).status_code == 200


def alert_states(prometheus: str) -> set[str]:
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {alert["state"] for alert in alerts if alert["labels"]["alertname"] == ALERT}


def window_divergence(prometheus: str) -> list[float]:
    """The drift gauge as Prometheus last scraped it, once the window is full (empty before)."""
    query = f"fashion_drift_class_js_divergence_bits and on(backend, version) fashion_drift_window_images >= {WINDOW}"
    result = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]
    return [float(series["value"][1]) for series in result]


def test_the_drift_alert_fires_on_digits_and_clears_on_clothing(exported, dataset, tmp_path):
    home = store_with(exported, tmp_path)
    server = start(tmp_path, env={"FASHION_DRIFT_WINDOW": str(WINDOW), "FASHION_DRIFT_INTERVAL_S": "0.2"},
                   models=home / "models")
    prometheus_port = free_port()
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    process = None
    try:
        server.wait_ready()
        config = write_prometheus_config(tmp_path, server.url.removeprefix("http://"))
        with open(tmp_path / "prometheus.log", "w") as log:
            process = subprocess.Popen(["prometheus", f"--config.file={config}",
                                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                        f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                                       stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: answers_ok(f"{prometheus}/-/ready"), "Prometheus ready", HANG_GUARD_S, interval=0.2)

        upload(server.url, dataset.test_images[:WINDOW])
        (calm,) = wait_until(lambda: window_divergence(prometheus), "a full window of clothing scraped",
                             HANG_GUARD_S, interval=0.2)
        assert calm < 0.15 and alert_states(prometheus) == set()

        upload(server.url, digits(WINDOW))
        wait_until(lambda: "firing" in alert_states(prometheus), f"{ALERT} firing", HANG_GUARD_S, interval=0.2)

        upload(server.url, dataset.test_images[WINDOW:2 * WINDOW])
        wait_until(lambda: alert_states(prometheus) == set(), f"{ALERT} cleared", HANG_GUARD_S, interval=0.2)
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        server.stop()
