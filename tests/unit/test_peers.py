"""benchmark.peers without servers: medians over repetitions, the report's tables, each peer's venv and payloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark import peers

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product

PNG = b"\x89PNG fake"
PIXELS = np.arange(784, dtype=np.uint8).reshape(28, 28)


def run(peer: str, route: str, level: int, rep: int, rps: float, p99: float, status: str = "200") -> dict:
    return {"peer": peer, "route": route, "connections": level, "rep": rep, "rps": rps, "p50_ms": p99 / 2,
            "p99_ms": p99, "statuses": {status: 10}, "socket_errors": 0, "wrk_cpu_cores": 0.2}


def test_medians_take_the_middle_repetition_and_count_non_200_answers():
    rows = [run("KServe", "v1 JSON", 1, rep, rps, p99) for rep, (rps, p99) in enumerate([(10, 3), (30, 1), (20, 2)])]
    rows.append(run("KServe", "v1 JSON", 16, 0, 5, 9, status="500"))
    first, second = peers.medians(rows)
    assert (first["reps"], first["rps"], first["p99_ms"], first["non_200"]) == (3, 20, 2, 0)
    assert (second["connections"], second["non_200"]) == (16, 10)


def test_report_shows_every_route_perf_analyzer_errors_and_failures():
    routes = (("fashion-serve", "v2 binary"), ("KServe", "v2 JSON"))
    rows = [run(p, r, c, 0, 100, 4) for p, r in routes for c in (1, 16, 64)]
    report = {"machine": "m", "argv": ["--reps", "1"], "when": "now", "seconds": 5, "reps": 1, "note": "busy",
              "cores": 2, "medians": peers.medians(rows),
              "perf_analyzer": {"fashion-serve": {"rows": [{"connections": 1, "infer_per_s": 1234.0, "p50_ms": 1.0,
                                                            "p99_ms": 2.5}]},
                                "KServe": {"error": "no Triton model configuration"}},
              "peers": [{"name": "KServe", "version": "kserve 0.21.0", "configuration": "1 worker", "venv_mb": 518.0}],
              "failures": {"Ray Serve": "did not start: timeout"}}
    text = peers.render(report)
    cell = "100, 2.0 ms, 4.0 ms"
    assert f"| fashion-serve | v2 binary | {cell} | {cell} | {cell} | 10% |" in text
    assert "| fashion-serve | 1,234, 1.0 ms, 2.5 ms | - | - |" in text
    assert "- perf_analyzer against KServe: no Triton model configuration" in text
    assert "- Ray Serve: did not start: timeout" in text and "| KServe | kserve 0.21.0 | 1 worker | 518 |" in text


def test_each_framework_has_its_own_pinned_venv_and_ours_runs_in_this_one(tmp_path):
    servers = {p.name: p for p in peers.peers(PNG, PIXELS)}
    assert servers["Ray Serve"].venv(tmp_path) == tmp_path / "ray-2.60.0"
    assert servers["MLServer"].venv(tmp_path) == tmp_path / "mlserver-1.7.1"
    assert servers["fashion-serve"].packages == () and servers["bare raw body"].packages == ()
    assert len({p.venv(tmp_path) for p in servers.values() if p.packages}) == 5
    assert {p.v2_model for p in servers.values() if p.v2_model} == {"onnx-torch", "fashion"}


def test_every_peer_gets_the_same_pixels():
    for peer in peers.peers(PNG, PIXELS):
        for route in peer.routes:
            if route.content_type != "application/json":
                continue
            body = json.loads(route.body)
            values = body.get("pixels") or body.get("instances") or body["inputs"][0]["data"]
            assert np.array_equal(np.asarray(values, dtype=np.uint8).reshape(28, 28), PIXELS), (peer.name, route.label)


def test_mlserver_settings_batch_and_use_the_given_port(tmp_path: Path):
    folder = peers.write_mlserver_settings(tmp_path / "ml", 18000)
    server = json.loads((folder / "settings.json").read_text())
    model = json.loads((folder / "model-settings.json").read_text())
    assert server["http_port"] == 18000 and len({server["http_port"], server["grpc_port"], server["metrics_port"]}) == 3
    assert (model["max_batch_size"], model["max_batch_time"]) == (64, 0.005)


def test_our_v2_binary_routes_parse_as_one_image_and_one_asks_for_the_probabilities_alone():
    from service import v2

    routes = {route.label: route for route in peers.our_routes(PNG, PIXELS)}
    asked = {}
    for label in ("v2 binary", "v2 binary, probabilities"):
        route = routes[label]
        header, binary = v2.split_body(route.body, route.header.split(": ")[1])
        payload = v2.parse_header(header)
        assert (v2.read_input(payload["inputs"], binary, 1) == PIXELS[None]).all()
        asked[label] = [output.name for output in v2.requested_outputs(payload)]
    assert asked["v2 binary"] == list(v2.OUTPUTS) and asked["v2 binary, probabilities"] == ["probabilities"]
