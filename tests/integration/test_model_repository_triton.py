"""tritonclient drives the model repository and statistics extensions (service.repository): the service's ASGI
app served over HTTP by uvicorn in this process (tritonclient speaks HTTP through its own connection pool, so a
test client cannot stand in), with an API key holding the ``inference`` and ``admin`` scopes."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from benchmark.harness import free_port
from service.auth import new_key
from tests.helpers import wait_until

triton = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (dev extra) is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402 (after the skip above)

MODEL = "onnx-torch"


@pytest.fixture(scope="module")
def key():
    return new_key(["inference", "admin"])


@pytest.fixture(scope="module")
def url(service_app, key, dataset, tmp_path_factory):
    """The app served by uvicorn on a local port while the module runs; the gate's golden set is 2,000 test
    images."""
    import uvicorn

    golden = tmp_path_factory.mktemp("golden") / "golden.npz"
    np.savez(golden, images=dataset.test_images[:2000], labels=dataset.test_labels[:2000])
    env = {"FASHION_API_KEYS": key[1].line(), "FASHION_BACKENDS": MODEL, "FASHION_GOLDEN_SET": str(golden)}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    port = free_port()  # not a fixed one: another run of the suite may be listening on it
    server = uvicorn.Server(uvicorn.Config(service_app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "uvicorn to listen", 120)
        import httpx

        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, "the service to be ready",
                   300, interval=0.25)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def client(url):
    with triton.InferenceServerClient(url) as found:
        yield found


def test_tritonclient_loads_pins_reads_statistics_and_unloads_a_version(client, key, weak_export, exported):
    headers = {"Authorization": f"Bearer {key[0]}"}
    old = json.loads((exported["torch"] / "manifest.json").read_text())["version"]
    new = json.loads((weak_export / "manifest.json").read_text())["version"]
    assert client.get_server_metadata(headers=headers)["extensions"][-2:] == ["model_repository", "statistics"]
    assert {"name": MODEL, "version": old, "state": "READY", "reason": ""} in client.get_model_repository_index(
        headers=headers)
    assert not client.is_model_ready(MODEL, new, headers=headers)
    client.load_model(MODEL, headers=headers, query_params={"source": str(weak_export), "promote": "false",
                                                             "accuracy_margin": "1"})
    assert client.is_model_ready(MODEL, new, headers=headers) and client.is_model_ready(MODEL, old, headers=headers)
    pixels = triton.InferInput("images", [3, 28, 28], "UINT8")
    pixels.set_data_from_numpy(np.zeros((3, 28, 28), np.uint8))
    answer = client.infer(MODEL, [pixels], model_version=new, headers=headers)
    assert answer.get_response()["model_version"] == new
    assert client.infer(MODEL, [pixels], headers=headers).get_response()["model_version"] == old
    [stats] = client.get_inference_statistics(MODEL, new, headers=headers)["model_stats"]
    # Triton names versions by integers, and perf_analyzer parses them so: the statistics use the hash's number.
    assert (stats["name"], stats["version"], stats["inference_count"]) == (MODEL, str(int(new[:15], 16)), 3)
    assert client.get_inference_statistics(MODEL, stats["version"], headers=headers)["model_stats"] == [stats]
    assert client.is_model_ready(MODEL, stats["version"], headers=headers)
    assert stats["inference_stats"]["success"]["count"] == 1 and stats["inference_stats"]["compute_infer"]["ns"] > 0
    client.unload_model(MODEL, headers=headers, query_params={"version": new})
    assert not client.is_model_ready(MODEL, new, headers=headers) and client.is_model_ready(MODEL, old,
                                                                                            headers=headers)


def test_tritonclient_sees_a_refused_load_with_its_reason(client, key, weak_export):
    headers = {"Authorization": f"Bearer {key[0]}"}
    with pytest.raises(InferenceServerException, match="golden-set accuracy"):
        client.load_model(MODEL, headers=headers, query_params={"source": str(weak_export), "accuracy_margin": "0"})
    with pytest.raises(InferenceServerException, match="API key is required"):
        client.load_model(MODEL)
