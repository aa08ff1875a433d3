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
    assert ports(container)["http"] == BENTOML_PORT and ports(container)["health"] == config.health_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "health"


def test_the_grpc_port_is_the_service_setting_exposed_and_health_checked(manifests, container):
    from service.config import ServiceConfig

    config = ServiceConfig.from_env({"FASHION_GRPC_PORT": env(container)["FASHION_GRPC_PORT"]})
    assert ports(container) == {"http": BENTOML_PORT, "health": 3001, "grpc": config.grpc_port}
    # Kubernetes' grpc probe calls grpc.health.v1.Health/Check with service "" (service.grpc_server.ReadinessHealth).
    assert container["startupProbe"]["grpc"] == {"port": config.grpc_port}
    assert {"name": "grpc", "port": config.grpc_port, "targetPort": "grpc"} in manifests["Service"]["spec"]["ports"]


def test_the_grpc_probe_is_answered_serving_once_ready():
    """What the kubelet's grpc probe asks (service "" of grpc.health.v1), answered by the service's gRPC server."""
    import asyncio
    from types import SimpleNamespace

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service.grpc_server import GrpcSettings, start_grpc_server

    async def check(ready: bool) -> int:
        serving = SimpleNamespace(not_ready_reason=lambda: None if ready else "loading")
        server = await start_grpc_server(serving, GrpcSettings("127.0.0.1", 0, 1024, 5.0))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                return answer.status
        finally:
            await server.stop(None)

    assert asyncio.run(check(True)) == health_pb2.HealthCheckResponse.SERVING
    assert asyncio.run(check(False)) == health_pb2.HealthCheckResponse.NOT_SERVING


def test_the_probe_paths_are_the_ones_the_health_server_answers(container):
    from service.health import Heartbeat, start_health_server

    port = free_port()
    server = start_health_server("127.0.0.1", port, lambda: None, heartbeat=Heartbeat(10))
    try:
        for probe in ("readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 200, path
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    finally:
        server.shutdown()


def test_the_grace_period_covers_the_pre_stop_delay_and_the_request_timeout(manifests, container):
    from service.service import GRPC_GRACE_S, FashionClassifier

    delay = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = manifests["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # gRPC drains after HTTP has (service.service.FashionClassifier.drain_grpc).
    assert delay >= 5 and grace > delay + FashionClassifier.config["traffic"]["timeout"] + GRPC_GRACE_S


def test_liveness_waits_longer_than_the_heartbeat_may_be_silent(container):
    from service.health import Heartbeat

    probe, stale = container["livenessProbe"], float(env(container)["FASHION_LIVENESS_STALE_S"])
    assert probe["periodSeconds"] * probe["failureThreshold"] > stale > Heartbeat(stale).interval
    assert probe["timeoutSeconds"] >= 2  # the probe thread answers within 0.49 s under a flood (results/reliability.md)


def test_threads_are_left_to_the_cpu_limit(container):
    assert "FASHION_THREADS" not in env(container) and container["resources"]["limits"]["cpu"]


def test_the_service_targets_the_http_port(manifests, container):
    (port,) = [p for p in manifests["Service"]["spec"]["ports"] if p["name"] == "http"]
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
