"""The BentoML service as a real ``bentoml serve`` process shows it: live but not ready with a tampered model (its
own probes and the v2 ones), the Bento it builds, and the refusals that pass through uvicorn. Everything else
about its HTTP behaviour is tested in-process: tests/integration/test_service_http.py, test_v2.py and others.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import BAD_INPUTS, SAMPLE, start_server, store_with, wait_until

REPO = Path(__file__).resolve().parents[2]
REAL_SERVER_CASES = ("oversize body", "too many images", "pickle content type", "url instead of a file")


# Every case runs in-process (tests/integration/test_refusals_asgi.py); these go through the real server too.
def test_bad_input_gets_a_documented_4xx_and_the_server_stays_ready(server):
    for case in REAL_SERVER_CASES:
        route, kwargs, status = BAD_INPUTS[case]
        reply = httpx.post(server + route, timeout=30, **kwargs)
        assert reply.status_code == status, (case, reply.text)
        body = reply.json()
        message = body[0]["error"] if isinstance(body, list) else body["error"]
        assert isinstance(message, str) and message, case
        assert httpx.get(f"{server}/readyz").status_code == 200, case


def test_not_ready_until_models_load_and_never_with_a_tampered_model(exported, tmp_path):
    home = store_with(exported, tmp_path, tamper="torch/model.onnx")
    instance = start_server(home, tmp_path)
    url = instance.url
    try:
        instance.wait_ready(path="/livez")
        assert httpx.get(f"{url}/readyz").status_code == 503
        info = wait_until(lambda: (answer := httpx.post(f"{url}/model_info").json())["error"] and answer,
                          "/model_info to report the loading error", 300, interval=0.25)
        assert "model.onnx" in info["error"] and "SHA-256" in info["error"]
        assert httpx.get(f"{url}/readyz").status_code == 503
        with pytest.raises(RuntimeError, match=r"models failed to load.*SHA-256"):
            instance.wait_ready(timeout=60)  # says why at once instead of waiting out the timeout
        reply = httpx.post(f"{url}/classify", files={"images": ("a.png", SAMPLE, "image/png")})
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
        assert "not ready" in reply.json()["error"] and "SHA-256" in reply.json()["error"]
        check_v2_not_ready(url)
    finally:
        instance.stop()


def check_v2_not_ready(url: str) -> None:
    """The v2 routes of a live server whose onnx-torch model failed its checksum, as Triton's client sees them."""
    triton = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (dev extra) is not installed")
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        assert client.is_server_live() and not client.is_server_ready()
        assert not client.is_model_ready("onnx-torch")
        assert client.get_server_metadata()["name"] == "fashion-serve"
    finally:
        client.close()
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 503
    header = json.dumps({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 784}}]}).encode()
    reply = httpx.post(f"{url}/v2/models/onnx-torch/infer", content=header + bytes(784),
                       headers={"Inference-Header-Content-Length": str(len(header))})
    assert reply.status_code == 503 and reply.headers["retry-after"] and "not ready" in reply.json()["error"]


def test_bentoml_build_packages_the_service(server, bentoml_home, tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "build", str(REPO), "--output", "tag"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    import bentoml

    bento = bentoml.get(tag)
    files = {str(p.relative_to(bento.path)) for p in Path(bento.path).rglob("*") if p.is_file()}
    assert "src/service/service.py" in files and not any(f.startswith("src/training") for f in files)
    [service] = bento.info.services
    assert {m.tag.name for m in service.models} == {"fashion-mlp-torch", "fashion-mlp-tf"}
    assert service.config["logging"]["access"]["enabled"] is False

