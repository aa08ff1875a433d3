"""Model versions at runtime (service.lifecycle, service.repository) in process: versions side by side, pinning,
load / promote / rollback / unload, the three refusals with the serving version answering throughout, the
management routes' keys, and Triton's statistics. The service's ASGI app under Starlette's TestClient, as
tests/integration/test_auth_asgi.py."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from service.auth import new_key
from tests.asgi import in_process
from tests.helpers import held_batcher, npy, queued_jobs, wait_until

MODEL = "onnx-torch"
PIXELS = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
V2_BODY = {"inputs": [{"name": "images", "shape": [2, 28, 28], "datatype": "UINT8", "data": PIXELS.ravel().tolist()}]}
GOLDEN_IMAGES = 2000
REPOSITORY = f"/v2/repository/models/{MODEL}"


@pytest.fixture(scope="module")
def keys():
    """name -> (key, its configuration entry)."""
    return {name: new_key(scopes) for name, scopes in (("admin", ["admin"]), ("infer", ["inference"]))}


@pytest.fixture(scope="module")
def weak(weak_export):
    return weak_export


@pytest.fixture(scope="module")
def golden(dataset, tmp_path_factory):
    """The gate's golden set: the first test images, as FASHION_GOLDEN_SET reads them."""
    path = tmp_path_factory.mktemp("golden") / "golden.npz"
    np.savez(path, images=dataset.test_images[:GOLDEN_IMAGES], labels=dataset.test_labels[:GOLDEN_IMAGES])
    return path


@pytest.fixture(scope="module")
def hold(tmp_path_factory):
    return tmp_path_factory.mktemp("hold") / "hold"


@pytest.fixture(scope="module")
def client(service_app, keys, golden, hold):
    """The service with an admin key and an inference key, the golden set, and the batcher's test gate."""
    with in_process(service_app, {
            "FASHION_API_KEYS": "\n".join(entry.line() for _, entry in keys.values()), "FASHION_BACKENDS": MODEL,
            "FASHION_GOLDEN_SET": str(golden), "FASHION_BATCH_HOLD_FILE": str(hold)}) as found:
        yield found


def bearer(keys, name: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[name][0]}"}


def serving_version(client, keys) -> str:
    return client.post("/model_info", headers=bearer(keys, "infer")).json()["backends"][MODEL]["model_version"]


def classify(client, keys, version: str | None = None) -> str:
    """The version that answered a native request (both images name the same one)."""
    reply = client.post("/classify_array", content=npy(PIXELS), params={"version": version} if version else None,
                        headers={"Content-Type": "application/x-npy", **bearer(keys, "infer")})
    assert reply.status_code == 200, reply.text
    versions = {answer["model_version"] for answer in reply.json()}
    assert len(versions) == 1
    return versions.pop()


def infer(client, keys, version: str | None = None):
    path = f"/v2/models/{MODEL}/versions/{version}/infer" if version else f"/v2/models/{MODEL}/infer"
    return client.post(path, json=V2_BODY, headers=bearer(keys, "infer"))


def load(client, keys, source: Path | str | None = None, **parameters):
    body = {"parameters": {**({"source": str(source)} if source else {}), **parameters}}
    return client.post(f"{REPOSITORY}/load", json=body, headers=bearer(keys))


class Answering:
    """v2 requests in a loop on another thread while the block runs: every status and version they got."""

    def __init__(self, client, keys) -> None:
        self.client, self.keys = client, keys
        self.seen: list[tuple[int, str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            reply = infer(self.client, self.keys)
            self.seen.append((reply.status_code, reply.json().get("model_version")))

    def __enter__(self) -> Answering:
        self.thread.start()
        wait_until(lambda: self.seen, "the first request to be answered", 60)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)


def test_management_routes_do_not_exist_without_an_admin_key(service_app):
    with in_process(service_app, {"FASHION_BACKENDS": MODEL}) as client:
        for path in ("/v2/repository/index", f"{REPOSITORY}/load", f"{REPOSITORY}/unload", f"{REPOSITORY}/rollback"):
            reply = client.post(path, json={})
            assert reply.status_code == 404, (path, reply.text)
            assert "admin" in reply.json()["error"]
        assert client.post(f"/v2/models/{MODEL}/infer", json=V2_BODY).status_code == 200


def test_management_needs_a_valid_key_with_the_admin_scope(client, keys):
    wrong = keys["admin"][0][:-4] + "beef"
    for path in ("/v2/repository/index", f"{REPOSITORY}/load", f"{REPOSITORY}/unload", f"{REPOSITORY}/promote"):
        assert client.post(path, json={}).status_code == 401, path
        assert client.post(path, json={}, headers={"Authorization": f"Bearer {wrong}"}).status_code == 401, path
        refused = client.post(path, json={}, headers=bearer(keys, "infer"))
        assert refused.status_code == 403 and "admin" in refused.json()["error"], path
    index = client.post("/v2/repository/index", headers=bearer(keys))
    assert index.status_code == 200
    assert {"name": MODEL, "version": serving_version(client, keys), "state": "READY", "reason": ""} in index.json()


def test_each_version_is_listed_with_its_lineage(client, keys, exported):
    manifest = json.loads((exported["torch"] / "manifest.json").read_text())
    info = client.post("/model_info", headers=bearer(keys, "infer")).json()["backends"][MODEL]
    assert [v["version"] for v in info["versions"]] == [manifest["version"]]
    listed = info["versions"][0]
    assert listed["serving"] and listed["run"] == manifest["run"] and listed["preset"] == manifest["preset"]
    assert listed["test_accuracy"] == manifest["source_test_accuracy"] and listed["exported"] == manifest["created"]
    metadata = client.get(f"/v2/models/{MODEL}", headers=bearer(keys, "infer")).json()
    assert metadata["versions"] == [manifest["version"]] and metadata["lineage"][0]["run"] == manifest["run"]


def refuse(client, keys, source: Path, status: int, reason: str) -> dict:
    """Load ``source``; it must be refused with ``status`` and ``reason`` while v2 requests keep being answered by
    the serving version, which is still the only one loaded afterwards."""
    before = serving_version(client, keys)
    with Answering(client, keys) as answering:
        reply = load(client, keys, source)
    assert reply.status_code == status, reply.text
    assert reply.json()["reason"] == reason
    assert answering.seen and set(answering.seen) == {(200, before)}
    info = client.post("/model_info", headers=bearer(keys, "infer")).json()["backends"][MODEL]
    assert info["model_version"] == before and [v["version"] for v in info["versions"]] == [before]
    return reply.json()


def test_a_version_whose_file_fails_its_checksum_is_refused(client, keys, weak, tmp_path):
    tampered = copy_of(weak, tmp_path)
    payload = bytearray((tampered / "model.onnx").read_bytes())
    payload[100] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(payload))
    assert "model.onnx" in refuse(client, keys, tampered, 422, "checksum")["error"]


def test_a_version_whose_artifacts_disagree_is_refused(client, keys, weak, tmp_path):
    """Its PyTorch state dict drifted from its ONNX graph; the manifest was rewritten to match the files."""
    import torch

    from fashion.manifest import sha256_file

    drifted = copy_of(weak, tmp_path)
    state = torch.load(drifted / "model.pt", map_location="cpu", weights_only=True)
    torch.save({name: tensor + 0.05 * torch.randn_like(tensor) for name, tensor in state.items()},
               drifted / "model.pt")
    manifest = json.loads((drifted / "manifest.json").read_text())
    manifest["artifacts"]["torch"]["sha256"] = {"model.pt": sha256_file(drifted / "model.pt")}
    (drifted / "manifest.json").write_text(json.dumps(manifest))
    assert "torch" in refuse(client, keys, drifted, 422, "parity")["error"]


def test_a_version_whose_sibling_artifact_fails_its_checksum_is_refused(client, keys, weak, tmp_path):
    """The parity gate loads the state dict in a child process (python -m fashion.servable): its refusal comes
    back as the checksum refusal it is, naming the backend and the file."""
    tampered = copy_of(weak, tmp_path)
    payload = bytearray((tampered / "model.pt").read_bytes())
    payload[-100] ^= 0xFF
    (tampered / "model.pt").write_bytes(bytes(payload))
    error = refuse(client, keys, tampered, 422, "checksum")["error"]
    assert "torch" in error and "model.pt" in error


def test_a_parity_sibling_that_does_not_answer_in_time_is_refused(client, keys, weak, monkeypatch):
    import service.lifecycle

    monkeypatch.setattr(service.lifecycle, "SIBLING_TIMEOUT_S", 0.001)  # no child process starts that fast
    assert "not loaded within" in refuse(client, keys, weak, 422, "load")["error"]


def test_a_version_less_accurate_than_the_serving_one_is_refused(client, keys, weak):
    error = refuse(client, keys, weak, 409, "accuracy")["error"]
    assert f"{GOLDEN_IMAGES} images" in error


def copy_of(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / model_dir.name
    shutil.copytree(model_dir, target)
    return target


def test_load_pin_promote_roll_back_and_unload(client, keys, weak, exported):
    old = serving_version(client, keys)
    new = json.loads((weak / "manifest.json").read_text())["version"]
    assert old != new
    # Loaded beside the serving version: pinnable, not answering others.
    reply = load(client, keys, weak, promote=False, accuracy_margin=1)
    assert reply.status_code == 200, reply.text
    assert reply.json()["serving"] == old and reply.json()["gate"]["parity"]["compared"] == ["onnx-torch", "torch"]
    assert classify(client, keys) == old and classify(client, keys, new) == new
    assert infer(client, keys, new).json()["model_version"] == new
    assert client.get(f"/v2/models/{MODEL}/versions/{new}/ready", headers=bearer(keys, "infer")).status_code == 200
    # Promoted: every answer comes from the new version; the old one stays pinnable.
    reply = client.post(f"{REPOSITORY}/promote", json={"parameters": {"version": new}}, headers=bearer(keys))
    assert reply.status_code == 200 and reply.json()["replaced"] == old
    assert classify(client, keys) == new and infer(client, keys).json()["model_version"] == new
    assert classify(client, keys, old) == old
    # Rolled back, then the new version unloaded: gone, and the serving one cannot be unloaded.
    assert client.post(f"{REPOSITORY}/rollback", headers=bearer(keys)).json()["serving"] == old
    assert classify(client, keys) == old
    reply = client.post(f"{REPOSITORY}/unload", json={"parameters": {"version": new}}, headers=bearer(keys))
    assert reply.status_code == 200 and reply.json()["unloaded"] == [new]
    assert infer(client, keys, new).status_code == 404
    gone = client.post("/classify_array", content=npy(PIXELS), params={"version": new},
                       headers={"Content-Type": "application/x-npy", **bearer(keys, "infer")})
    body = gone.json()  # BentoML 1.4 wraps a parser's error in a list (tests/integration/test_refusals_asgi.py)
    assert gone.status_code == 404 and old in (body[0] if isinstance(body, list) else body)["error"]
    reply = client.post(f"{REPOSITORY}/unload", json={"parameters": {"version": old}}, headers=bearer(keys))
    assert reply.status_code == 409 and reply.json()["reason"] == "serving"
    assert client.post(f"{REPOSITORY}/rollback", headers=bearer(keys)).status_code == 409
    assert [v["version"] for v in client.post("/model_info", headers=bearer(keys, "infer")).json()["backends"][
        MODEL]["versions"]] == [old]


def test_a_request_in_flight_finishes_on_the_version_it_started_on(client, keys, weak, hold):
    old = serving_version(client, keys)
    assert load(client, keys, weak, promote=False, accuracy_margin=1).status_code == 200
    new = json.loads((weak / "manifest.json").read_text())["version"]
    answers: list[str] = []
    with held_batcher(hold):
        waiting = threading.Thread(target=lambda: answers.append(classify(client, keys)))
        waiting.start()
        wait_until(lambda: queued_jobs(hold) == 1, "the request to be queued", 60)
        promoted = client.post(f"{REPOSITORY}/promote", json={"parameters": {"version": new}}, headers=bearer(keys))
        assert promoted.status_code == 200
    waiting.join(60)
    assert answers == [old]
    assert classify(client, keys) == new
    client.post(f"{REPOSITORY}/rollback", headers=bearer(keys))
    assert client.post(f"{REPOSITORY}/unload", headers=bearer(keys)).json()["unloaded"] == [new]


def test_statistics_count_each_request_in_tritons_format(client, keys):
    version = serving_version(client, keys)

    def stats() -> dict:
        reply = client.get(f"/v2/models/{MODEL}/versions/{version}/stats", headers=bearer(keys, "infer"))
        assert reply.status_code == 200
        [model] = reply.json()["model_stats"]
        return model

    before = stats()
    for _ in range(5):
        assert infer(client, keys).status_code == 200
    after = stats()
    number = str(int(version[:15], 16))  # Triton's integer name for the version, which perf_analyzer parses
    assert after["name"] == MODEL and after["version"] == number
    done = {stage: after["inference_stats"][stage]["count"] - before["inference_stats"][stage]["count"]
            for stage in after["inference_stats"]}
    assert done == {"success": 5, "fail": 0, "queue": 5, "compute_input": 5, "compute_infer": 5, "compute_output": 5,
                    "cache_hit": 0, "cache_miss": 0}
    assert after["inference_count"] - before["inference_count"] == 5 * len(PIXELS)
    assert after["execution_count"] - before["execution_count"] == 5  # one request at a time: a call each
    spent = {stage: after["inference_stats"][stage]["ns"] - before["inference_stats"][stage]["ns"]
             for stage in ("success", "queue", "compute_input", "compute_infer", "compute_output")}
    assert spent["compute_infer"] > 0
    assert spent["success"] >= spent["queue"] + spent["compute_input"] + spent["compute_infer"] + spent[
        "compute_output"]
    every = client.get("/v2/models/stats", headers=bearer(keys, "infer")).json()["model_stats"]
    assert [(m["name"], m["version"]) for m in every] == [(MODEL, number)]
    by_number = client.get(f"/v2/models/{MODEL}/versions/{number}/stats", headers=bearer(keys, "infer"))
    assert by_number.json()["model_stats"][0]["inference_count"] == after["inference_count"]


def resident_bytes() -> int:
    """This process's resident memory (the in-process service is its worker)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc (Linux)")
def test_twenty_load_and_unload_cycles_return_their_memory(client, keys, weak):
    def cycle() -> None:
        assert load(client, keys, weak, promote=False, accuracy_margin=1).status_code == 200
        assert client.post(f"{REPOSITORY}/unload", headers=bearer(keys)).json()["unloaded"]

    cycle()
    after_first = resident_bytes()
    for _ in range(19):
        cycle()
    assert resident_bytes() <= 1.1 * after_first, (after_first, resident_bytes())


def v2_images(client, keys, images: np.ndarray):
    body = {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8",
                        "data": images.ravel().tolist()}]}
    return client.post(f"/v2/models/{MODEL}/infer", json=body, headers=bearer(keys, "infer"))


def traffic(client, keys) -> dict:
    return client.post("/model_info", headers=bearer(keys, "infer")).json()["backends"][MODEL]["traffic"]


def test_shadow_agreement_matches_an_offline_comparison_of_the_same_requests(client, keys, weak, exported, dataset):
    from fashion.servable import load_servable
    from service.shadow import metrics as shadow_metrics

    old, new = serving_version(client, keys), json.loads((weak / "manifest.json").read_text())["version"]
    images = dataset.test_images[GOLDEN_IMAGES:GOLDEN_IMAGES + 400]
    assert load(client, keys, weak, promote=False, accuracy_margin=1).status_code == 200
    reply = client.post(f"{REPOSITORY}/shadow", json={"parameters": {"version": new, "share": 1}},
                        headers=bearer(keys))
    assert reply.status_code == 200 and reply.json()["mode"] == "shadow", reply.text
    for chunk in np.split(images, 8):
        answer = v2_images(client, keys, chunk)
        assert answer.status_code == 200 and answer.json()["model_version"] == old  # the shadow never answers
    shadowed = wait_until(lambda: (s := traffic(client, keys)["shadow"].get(new)) and s["images"] == len(images)
                          and s, "the shadow requests to be compared", 120)
    served = load_servable(exported["torch"], MODEL, "cpu", threads=1).logits(images).argmax(1)
    candidate = load_servable(weak, MODEL, "cpu", threads=1).logits(images).argmax(1)
    offline = float((served == candidate).mean())
    assert offline < 1  # the two versions differ
    assert abs(shadowed["agreement"] - offline) <= 0.005, (shadowed, offline)
    assert shadowed["requests"] == 8 and shadowed["failed"] == 0 and shadowed["max_abs_dp"] > 0
    # The same count in the Prometheus series /metrics serves (read in process: whether this process's /metrics
    # shows them depends on which test module first started the shared app, see tests/conftest.py).
    [family] = shadow_metrics()["agreed"].collect()
    assert [sample.value for sample in family.samples if sample.name.endswith("_total")
            and sample.labels == {"backend": MODEL, "version": new}] == [round(offline * len(images))]
    # A promotion ends the mode; so does the rollback after it.
    assert client.post(f"{REPOSITORY}/promote", json={"parameters": {"version": new}},
                       headers=bearer(keys)).status_code == 200
    assert traffic(client, keys)["mode"] is None
    client.post(f"{REPOSITORY}/rollback", headers=bearer(keys))
    assert client.post(f"{REPOSITORY}/unload", headers=bearer(keys)).json()["unloaded"] == [new]


def test_a_canary_answers_its_share_of_the_requests_that_name_no_version(client, keys, weak):
    old, new = serving_version(client, keys), json.loads((weak / "manifest.json").read_text())["version"]
    assert load(client, keys, weak, promote=False, accuracy_margin=1).status_code == 200

    def canary(share: float) -> None:
        reply = client.post(f"{REPOSITORY}/canary", json={"parameters": {"version": new, "share": share}},
                            headers=bearer(keys))
        assert reply.status_code == 200, reply.text

    canary(1)
    assert {classify(client, keys) for _ in range(5)} == {new}
    assert {infer(client, keys).json()["model_version"] for _ in range(5)} == {new}
    assert classify(client, keys, old) == old  # a pinned request is not the canary's
    canary(0)
    assert traffic(client, keys)["mode"] is None and classify(client, keys) == old
    refused = client.post(f"{REPOSITORY}/canary", json={"parameters": {"version": old}}, headers=bearer(keys))
    assert refused.status_code == 409 and refused.json()["reason"] == "serving"
    canary(1)
    assert client.post(f"{REPOSITORY}/unload", headers=bearer(keys)).json()["unloaded"] == [new]
    assert traffic(client, keys)["mode"] is None and classify(client, keys) == old  # the unload ended it
