"""deploy/kubernetes matches the service: ports, probe paths and timings."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from benchmark.harness import free_port

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "fashion-serve.yaml"
BENTOML_PORT = 3000  # `bentoml serve`'s and the containerized Bento's default port


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.fixture(scope="module")
def container(manifests) -> dict:
    (only,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_the_health_port_is_the_service_setting_and_the_probes_use_it(container):
    from service.config import ServiceConfig

    config = ServiceConfig(health_port=int(env(container)["FASHION_HEALTH_PORT"]))
    assert ports(container) == {"http": BENTOML_PORT, "health": config.health_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "health"


def test_the_probe_paths_are_the_ones_the_health_server_answers(container):
    from service.health import Heartbeat, start_health_server

    port = free_port()
    server = start_health_server("127.0.0.1", port, lambda: None, heartbeat=Heartbeat(10))
    try:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 200, path
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    finally:
        server.shutdown()


def test_the_grace_period_covers_the_pre_stop_delay_and_the_request_timeout(manifests, container):
    from service.service import FashionClassifier

    delay = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = manifests["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert delay >= 5 and grace > delay + FashionClassifier.config["traffic"]["timeout"]


def test_liveness_waits_longer_than_the_heartbeat_may_be_silent(container):
    from service.health import Heartbeat

    probe, stale = container["livenessProbe"], float(env(container)["FASHION_LIVENESS_STALE_S"])
    assert probe["periodSeconds"] * probe["failureThreshold"] > stale > Heartbeat(stale).interval
    assert probe["timeoutSeconds"] >= 2  # the probe thread answers within 0.49 s under a flood (results/reliability.md)


def test_threads_are_left_to_the_cpu_limit(container):
    assert "FASHION_THREADS" not in env(container) and container["resources"]["limits"]["cpu"]


def test_the_service_targets_the_http_port(manifests, container):
    (port,) = manifests["Service"]["spec"]["ports"]
    assert port["targetPort"] == "http" and manifests["Service"]["spec"]["selector"] == \
        manifests["Deployment"]["spec"]["selector"]["matchLabels"]


def test_a_clients_task_calls_reach_the_pod_that_owns_the_task_for_as_long_as_its_result_is_kept(manifests):
    from service.task_board import RETENTION_S

    service = manifests["Service"]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    # Kubernetes caps the affinity at one day; BentoML keeps a task's result as long.
    assert service["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] >= min(RETENTION_S, 86400)


def test_production_runs_the_onnx_profiles_bento(container):
    """The image is the onnx profile's Bento (bentofile-onnx.yaml names it): the small one, for production."""
    from tests.bento_check import PROFILES

    name = yaml.safe_load((MANIFEST.parents[2] / PROFILES["onnx"]).read_text())["name"]
    assert container["image"].split(":")[0].rsplit("/", 1)[-1] == name == "fashion-classifier-onnx"
