"""A real server's health port: liveness beats from the serving event loop (the startup hook ran), and
/model_info tells which device each backend asked for and got."""

from __future__ import annotations

import httpx

from benchmark.harness import start
from fashion.env import has_nvidia_gpu


def test_livez_on_the_health_port_reports_the_event_loop_heartbeat(server, bentoml_home, tmp_path):
    # An empty FASHION_EVENT_LOOP is the default, whatever the environment running the tests sets.
    instance = start(tmp_path, env={"FASHION_BACKENDS": "onnx-torch,savedmodel", "FASHION_EVENT_LOOP": ""},
                     models=bentoml_home / "models", health_port=True)
    try:
        instance.wait_ready()
        live = httpx.get(f"{instance.health_url}/livez", timeout=5).json()
        assert live["live"] is True and live["reason"] is None
        assert live["heartbeat_age_s"] is not None and live["heartbeat_age_s"] <= 10, live
        # asyncio's loop by default: uvloop leaves a flood's connections in the accept queue (service.seams).
        assert live["event_loop"].startswith("asyncio."), live
        info = httpx.post(f"{instance.url}/model_info", timeout=30).json()
        assert info["gpu_present"] is has_nvidia_gpu()
        assert info["backends"]["savedmodel"]["device_requested"] == "cpu"
        assert info["backends"]["savedmodel"]["device"] == "CPU:0"
        assert info["backends"]["onnx-torch"]["device_requested"] == "auto"
    finally:
        instance.stop()
