"""API keys in-process (service.auth through admission control): each scope and each refusal on the native
routes, v2 and the task routes, tasks private to their key, a flood of wrong keys. The service's ASGI app under
Starlette's TestClient, as tests/integration/test_refusals_asgi.py; keys from ``FASHION_API_KEYS``."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import numpy as np
import pytest

from service.auth import new_key
from tests.asgi import in_process
from tests.helpers import error_body, npy, wait_until

# name: (scopes, rate, burst)
KEYS = {"infer": (["inference"], None, None), "tasks_a": (["tasks"], None, None), "tasks_b": (["tasks"], None, None),
        "admin": (["admin"], None, None), "limited": (["inference", "tasks"], "1/h", 3)}
PIXELS = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
V2_BODY = {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [7] * 784}]}
UNKNOWN_TASK = "0" * 32


def native(client, key: str | None = None, header: str = "Authorization"):
    return client.post("/classify_array", content=npy(PIXELS), headers={"Content-Type": "application/x-npy",
                                                                          **auth(key, header)})


def v2(client, key: str | None = None):
    return client.post("/v2/models/onnx-torch/infer", json=V2_BODY, headers=auth(key))


def task_route(client, route: str, task_id: str, key: str | None = None):
    method = "PUT" if route == "cancel" else "GET"
    return client.request(method, f"/classify_dataset/{route}", params={"task_id": task_id}, headers=auth(key))


def submit(client, key: str | None, images: np.ndarray):
    return client.post("/classify_dataset/submit", content=npy(images),
                       headers={"Content-Type": "application/x-npy", **auth(key)})


def auth(key: str | None, header: str = "Authorization") -> dict[str, str]:
    if key is None:
        return {}
    return {header: f"Bearer {key}" if header == "Authorization" else key}


@pytest.fixture(scope="module")
def keys():
    """name -> (key, entry)."""
    return {name: new_key(scopes, rate, burst) for name, (scopes, rate, burst) in KEYS.items()}


@pytest.fixture(scope="module")
def client(service_app, keys):
    """The service with the keys of :data:`KEYS` (read when the TestClient starts it), the session's models."""
    env = {"FASHION_API_KEYS": "\n".join(entry.line() for _, entry in keys.values()), "FASHION_BACKENDS": "onnx-torch"}
    with in_process(service_app, env) as test_client:
        yield test_client


def store_path() -> Path:
    """BentoML's task store: where it keeps each task's request (for ``retry``) and result."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.result_store_file.get())


def task_store() -> bytes:
    """The task store's bytes, its write-ahead log included."""
    path = store_path()
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(f"{path.name}*")))


def test_the_probes_and_the_page_stay_open(client):
    for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/ui/"):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize("route", ["native", "v2", "submit", "status", "metrics", "parity", "model_info"])
def test_no_key_or_a_wrong_key_is_401_with_a_bearer_challenge(client, keys, route):
    wrong = keys["infer"][0][:-4] + "beef"
    calls = {"native": lambda k: native(client, k), "v2": lambda k: v2(client, k),
             "submit": lambda k: submit(client, k, PIXELS), "status": lambda k: task_route(client, "status",
                                                                                             UNKNOWN_TASK, k),
             "metrics": lambda k: client.get("/metrics", headers=auth(k)),
             "parity": lambda k: client.post("/parity", headers=auth(k)),
             "model_info": lambda k: client.post("/model_info", headers=auth(k))}
    for key in (None, wrong, "not-a-key"):
        reply = calls[route](key)
        assert reply.status_code == 401, (route, reply.text)
        assert reply.headers["www-authenticate"].startswith("Bearer"), route
        assert "error" in reply.json() and (key is None or key not in reply.text)


def test_each_scope_opens_its_routes_and_no_others(client, keys):
    infer, tasks, admin = keys["infer"][0], keys["tasks_a"][0], keys["admin"][0]
    assert native(client, infer).status_code == 200
    assert native(client, infer, header="X-API-Key").status_code == 200
    assert v2(client, infer).status_code == 200
    assert client.post("/parity", headers=auth(infer)).status_code == 200
    assert client.post("/model_info", headers=auth(infer)).status_code == 200
    assert client.get("/metrics", headers=auth(admin)).status_code == 200
    for reply in (submit(client, infer, PIXELS), task_route(client, "status", UNKNOWN_TASK, infer),
                  client.get("/metrics", headers=auth(infer)), native(client, tasks), v2(client, tasks),
                  native(client, admin), v2(client, admin), submit(client, admin, PIXELS)):
        assert reply.status_code == 403, reply.text
        assert "scope" in reply.json()["error"]


def test_a_task_is_seen_only_by_the_key_that_submitted_it_and_its_key_is_not_stored(client, keys, dataset, caplog):
    owner, other = keys["tasks_a"][0], keys["tasks_b"][0]
    caplog.set_level(logging.DEBUG)
    reply = submit(client, owner, dataset.test_images[:300])
    assert reply.status_code == 200, reply.text
    task_id = reply.json()["task_id"]
    done = wait_until(lambda: (view := task_route(client, "progress", task_id, owner).json())["status"] !=
                      "in_progress" and view, "the task to end", 120)
    assert done["status"] == "completed" and done["done"] == 300
    wait_until(lambda: task_route(client, "status", task_id, owner).json()["status"] == "completed",
               "BentoML to record the task's end", 60)
    result = task_route(client, "get", task_id, owner)
    assert result.status_code == 200 and result.json()["count"] == 300
    unknown = {route: task_route(client, route, UNKNOWN_TASK, other) for route in ("status", "get", "progress",
                                                                                      "cancel")}
    for route, reply in unknown.items():
        foreign = task_route(client, route, task_id, other)
        assert foreign.status_code == reply.status_code == 404, route
        assert error_body(foreign) == error_body(reply) == {"error": "task_id not found"}, route
    assert task_route(client, "progress", task_id, owner).json()["status"] == "completed"  # the cancel did nothing
    stored = task_store()
    assert task_id.encode() in stored  # the store is the one the service wrote
    for secret in (owner, owner.split("_")[2]):
        assert secret.encode() not in stored and secret not in caplog.text


def test_a_key_over_its_rate_gets_429_on_every_route_and_another_key_does_not(client, keys):
    limited, infer = keys["limited"][0], keys["infer"][0]
    # Its burst of 3, one on each kind of route (an unknown task's status passes the key check, then 404).
    assert [native(client, limited).status_code, v2(client, limited).status_code,
            task_route(client, "status", UNKNOWN_TASK, limited).status_code] == [200, 200, 404]
    for reply in (native(client, limited), v2(client, limited), task_route(client, "status", UNKNOWN_TASK, limited),
                  submit(client, limited, PIXELS)):
        assert reply.status_code == 429, reply.text
        assert int(reply.headers["retry-after"]) >= 1 and "rate" in reply.json()["error"]
    assert native(client, infer).status_code == 200 and v2(client, infer).status_code == 200


def test_ten_thousand_wrong_keys_are_all_401_and_the_service_stays_ready(client, keys, caplog):
    infer, entry = keys["infer"]
    caplog.set_level(logging.INFO)
    forms = [lambda: f"fsk_{entry.key_id}_{secrets.token_hex(32)}", lambda: f"fsk_{secrets.token_hex(4)}_"
             f"{secrets.token_hex(32)}", lambda: secrets.token_urlsafe(24), lambda: infer[:-1]]
    statuses: dict[int, int] = {}
    for i in range(10_000):
        header = "X-API-Key" if i % 2 else "Authorization"
        reply = native(client, forms[i % len(forms)](), header=header)
        statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
    assert statuses == {401: 10_000}
    assert client.get("/readyz").status_code == 200
    assert native(client, infer).status_code == 200
    metrics = client.get("/metrics", headers=auth(keys["admin"][0])).text
    assert infer.split("_")[2] not in metrics and infer.split("_")[2] not in caplog.text
    assert json.dumps(entry.digest.hex()) not in metrics and entry.digest.hex() not in caplog.text


def classify_array_requests(client, keys) -> float:
    """BentoML's own count of requests to /classify_array, all statuses (its traffic-metrics layer)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics", headers=auth(keys["admin"][0])).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "bentoml_service_request_total"
               and sample.labels.get("endpoint") == "/classify_array")


def test_a_refused_key_is_answered_before_bentomls_own_layers(client, keys):
    """The key gate is the outermost layer (service.service.put_first): BentoML's traffic metrics, like its tracing
    and timeout layers, never see a refused key, and see an admitted one."""
    before = classify_array_requests(client, keys)
    assert [native(client, "fsk_00000000_" + "0" * 64).status_code for _ in range(5)] == [401] * 5
    assert native(client, keys["admin"][0]).status_code == 403
    assert classify_array_requests(client, keys) == before
    assert native(client, keys["infer"][0]).status_code == 200
    assert classify_array_requests(client, keys) == before + 1
