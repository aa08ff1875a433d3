"""Dataset tasks (service.task_routes, task_runner): submit, progress, results, cancel, failures, limits; in-process
(tests.asgi).

The service here is started with small task limits and chunks of at most 128 images, so that the
10,000 test images take at least 79 batcher calls (progress can be seen between them) and oversize
uploads stay small; everything else is the service as deployed.
"""

from __future__ import annotations

import contextlib
import gzip
from pathlib import Path

import numpy as np
import pytest

from fashion.backends import BACKENDS, load_artifact
from fashion.contract import CLASS_NAMES, preprocess, softmax, temperature_of
from fashion.manifest import read_manifest
from fashion.metrics import confusion_matrix
from fashion.samples import sample_paths
from tests.asgi import in_process, point_cli_at, send_until_answered
from tests.helpers import error_body, npy, npz, wait_until

CHUNK = 128
MAX_IMAGES = 12_000
MAX_BYTES = 12 * 1024 * 1024


@pytest.fixture(scope="module")
def hold_file(tmp_path_factory) -> Path:
    """The service's test gate (FASHION_TASK_HOLD_FILE): while it exists, tasks wait after their first chunk."""
    return tmp_path_factory.mktemp("task-gate") / "hold"


@contextlib.contextmanager
def held(hold: Path):
    """Tasks started inside stop after one chunk until the block ends (the gate is always lifted after)."""
    hold.touch()
    try:
        yield
    finally:
        hold.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def http(service_app, hold_file):
    """A TestClient on the in-process service with the two ONNX backends and small task limits."""
    env = {"FASHION_TASK_HOLD_FILE": str(hold_file),
           "FASHION_BACKENDS": "onnx-torch,onnx-tf", "FASHION_TASK_CHUNK_IMAGES": str(CHUNK),
           "FASHION_MAX_TASK_IMAGES": str(MAX_IMAGES), "FASHION_MAX_TASK_BYTES": str(MAX_BYTES)}
    with in_process(service_app, env) as client:
        yield client


def idx_images(pixels: np.ndarray) -> bytes:
    header = np.array([0x00000803, *pixels.shape], dtype=">u4").tobytes()
    return header + pixels.tobytes()


def real_file(data_dir: Path, name: str) -> Path:
    return next(data_dir.glob(f"{name}*"))


def offline_labels(exported, backend: str, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class ids and confidences from the exported artifact, loaded in this process."""
    spec = BACKENDS[backend]
    predictor = load_artifact(exported["torch" if spec.model.endswith("torch") else "tf"], spec.artifact,
                              spec.runtime, device="cpu")
    model_dir = exported["torch" if spec.model.endswith("torch") else "tf"]
    probs = softmax(predictor.predict(preprocess(pixels)), temperature_of(read_manifest(model_dir)))  # calibrated
    return probs.argmax(1), probs.max(1)


def post_submit(http, **request):
    """``/classify_dataset/submit``, answered as a server answers it: before the task it starts has run."""
    return send_until_answered(http, http.build_request("POST", "/classify_dataset/submit", **request))


def submit(http, **request) -> str:
    reply = post_submit(http, **request)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "in_progress"
    return reply.json()["task_id"]


def follow(http, task_id: str, until=lambda view: view["status"] != "in_progress") -> list[dict]:
    """Progress answers, polled until ``until`` holds (at most 120 s)."""
    seen: list[dict] = []

    def ended() -> bool:
        reply = http.get("/classify_dataset/progress", params={"task_id": task_id})
        assert reply.status_code == 200, reply.text
        seen.append(reply.json())
        return until(seen[-1])

    # A short pause between polls: the service runs in this process and needs the interpreter meanwhile.
    wait_until(ended, f"task {task_id} to reach the awaited state", 120, interval=0.01)
    return seen


def bentoml_status(http, task_id: str) -> str:
    return http.get("/classify_dataset/status", params={"task_id": task_id}).json()["status"]


UPLOADS = {
    "IDX files, gzipped, in a form": lambda d, data_dir: {
        "files": {"images": ("t10k-images.gz", real_file(data_dir, "t10k-images-idx3-ubyte").read_bytes()),
                  "labels": ("t10k-labels.gz", real_file(data_dir, "t10k-labels-idx1-ubyte").read_bytes())}},
    ".npz with labels as the body": lambda d, data_dir: {
        "content": npz(images=d.test_images, labels=d.test_labels),
        "headers": {"Content-Type": "application/octet-stream"}},
    ".npy without labels, onnx-tf": lambda d, data_dir: {
        "content": npy(d.test_images), "params": {"backend": "onnx-tf"},
        "headers": {"Content-Type": "application/x-npy"}},
}


@pytest.mark.parametrize("upload", list(UPLOADS))
def test_a_task_over_the_test_set_reports_progress_and_matches_the_offline_model(http, exported, dataset,
                                                                                  data_dir, upload, hold_file):
    total = len(dataset.test_images)
    with held(hold_file):  # the task stops after its first chunk, so its progress is seen part-way, every time
        task_id = submit(http, **UPLOADS[upload](dataset, data_dir))
        part_way = follow(http, task_id, until=lambda view: view["done"] > 0 or view["status"] != "in_progress")
    assert part_way[-1]["status"] == "in_progress" and part_way[-1]["done"] == CHUNK < total == part_way[-1]["total"]
    seen = part_way + follow(http, task_id)
    assert seen[-1]["status"] == "completed" and seen[-1]["done"] == seen[-1]["total"] == total
    done = [view["done"] for view in seen]
    assert done == sorted(done)
    assert bentoml_status(http, task_id) == "completed"

    reply = http.get("/classify_dataset/get", params={"task_id": task_id})
    assert reply.status_code == 200, reply.text
    result = reply.json()
    backend = "onnx-tf" if "onnx-tf" in upload else "onnx-torch"
    expected, confidence = offline_labels(exported, backend, dataset.test_images)
    assert result["task_id"] == task_id and result["backend"] == backend and result["count"] == total
    assert result["model_version"] == read_manifest(exported["tf" if backend == "onnx-tf" else "torch"])["version"]
    assert result["class_ids"] == expected.tolist()
    assert result["labels"] == [CLASS_NAMES[i] for i in expected]
    np.testing.assert_allclose(result["confidences"], confidence, atol=1e-6)
    if "without labels" in upload:
        assert result["accuracy"] is None and result["confusion_matrix"] is None
    else:
        assert result["accuracy"] == float((expected == dataset.test_labels).mean())
        assert result["confusion_matrix"] == confusion_matrix(dataset.test_labels, expected).tolist()


def test_a_task_gives_the_batch_clis_predictions_and_accuracy(http, data_dir, tmp_path, monkeypatch, capsys):
    """The same IDX files through the batch CLI and as a task, on the same service: the same answers."""
    import csv

    from clients.__main__ import main as cli

    images = real_file(data_dir, "t10k-images-idx3-ubyte")
    out = tmp_path / "cli.csv"
    url = point_cli_at(monkeypatch, http)
    assert cli(["--url", url, "batch", str(images), "--out", str(out), "--quiet"]) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    cli_accuracy = float(capsys.readouterr().out.split("accuracy ")[1].split()[0])

    labels = real_file(data_dir, "t10k-labels-idx1-ubyte")
    task_id = submit(http, files={"images": (images.name, images.read_bytes()),
                                         "labels": (labels.name, labels.read_bytes())})
    assert follow(http, task_id)[-1]["status"] == "completed"
    result = http.get("/classify_dataset/get", params={"task_id": task_id}).json()
    assert result["class_ids"] == [int(row["class_id"]) for row in rows]
    assert round(result["accuracy"], 4) == cli_accuracy


def wait_for_bentoml_status(http, task_id: str, timeout: float = 120.0) -> str:
    """BentoML's own status of the task once it is no longer in progress (it records the task's end)."""
    return wait_until(lambda: (status := bentoml_status(http, task_id)) != "in_progress" and status,
                      f"BentoML to record the end of task {task_id}", timeout)


def test_a_canceled_task_stops_within_a_chunk_and_ends_canceled(http, dataset, hold_file):
    with held(hold_file):  # the task is held after its first chunk: the cancel lands part-way, every time
        task_id = submit(http, content=npy(dataset.test_images), headers={"Content-Type": "application/x-npy"})
        started = follow(http, task_id, until=lambda view: view["done"] > 0 or view["status"] != "in_progress")
        assert started[-1]["status"] == "in_progress" and started[-1]["done"] == CHUNK

        reply = http.put("/classify_dataset/cancel", params={"task_id": task_id})
    assert reply.status_code == 200, reply.text
    at_cancel = reply.json()
    assert at_cancel["status"] == "canceled" and at_cancel["done"] == CHUNK
    # BentoML records the end once the task function has stopped: no chunk can start after that.
    assert wait_for_bentoml_status(http, task_id) == "canceled"
    [final] = follow(http, task_id)
    assert final["status"] == "canceled" and final["done"] == CHUNK < len(dataset.test_images)
    assert http.get("/classify_dataset/get", params={"task_id": task_id}).status_code == 400
    again = http.put("/classify_dataset/cancel", params={"task_id": task_id})
    assert again.status_code == 409 and again.json()["status"] == "canceled"


def sample_png(_d, _data_dir) -> dict:
    return {"content": sample_paths()[0].read_bytes(), "headers": {"Content-Type": "image/png"}}


FAILING = {
    "truncated gzip": (lambda d, data_dir: {"files": {"images": (
        "t10k.gz", real_file(data_dir, "t10k-images-idx3-ubyte").read_bytes()[:100_000])}},
        422, "cannot be decompressed"),
    "images of the wrong size": (lambda d, data_dir: {"content": npy(np.zeros((5, 32, 32), np.uint8))},
                                 422, "expected uint8 N x 28 x 28 images, got uint8 (5, 32, 32)"),
    "float pixels": (lambda d, data_dir: {"content": npy(d.test_images[:5].astype(np.float32))},
                     422, "got float32"),
    "fewer labels than images": (lambda d, data_dir: {"files": {"images": ("x.npy", npy(d.test_images[:100])),
                                                                "labels": ("y.npy", npy(d.test_labels[:99]))}},
                                 422, "expected 100 integer class ids"),
    "labels out of range": (lambda d, data_dir: {"content": npz(images=d.test_images[:10], labels=np.arange(10) + 1)},
                            422, "class ids must be 0 to 9"),
    "a PNG, not a dataset": (sample_png, 415, "not a dataset file"),
    "a pickled array": (lambda d, data_dir: {"content": npy(np.array([{"a": 1}]), allow_pickle=True)},
                        422, "pickle"),
    "an unknown backend": (lambda d, data_dir: {"content": npy(d.test_images[:10]), "params": {"backend": "nope"}},
                           400, "unknown backend 'nope'"),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_a_bad_upload_ends_failed_with_the_reason(http, dataset, data_dir, case):
    make, status, reason = FAILING[case]
    task_id = submit(http, **make(dataset, data_dir))
    [*_, final] = follow(http, task_id)
    assert final["status"] == "failed" and reason in final["error"], final
    assert bentoml_status(http, task_id) == "failed"
    reply = http.get("/classify_dataset/get", params={"task_id": task_id})
    assert reply.status_code == status and reason in reply.json()["error"], reply.text


def oversize_gzip(d, _data_dir) -> dict:
    # 20,000 real images compress to a few MB: only the IDX header tells the count at submit.
    return {"files": {"images": ("train.gz", gzip.compress(idx_images(d.train_images[:20_000]), compresslevel=1))}}


OVERSIZE = {
    ".npy over the image limit": (lambda d, data_dir: {"content": npy(d.train_images[:MAX_IMAGES + 1])},
                                  f"{MAX_IMAGES + 1:,} images; a task takes at most {MAX_IMAGES:,}"),
    "gzipped IDX over the image limit": (oversize_gzip, f"20,000 images; a task takes at most {MAX_IMAGES:,}"),
    "body over the byte limit": (lambda d, data_dir: {"content": npy(d.train_images[:17_000])},
                                 f"over the task limit of {MAX_BYTES:,}"),
}


@pytest.mark.parametrize("case", list(OVERSIZE))
def test_an_oversize_submit_is_refused_before_it_is_stored(http, dataset, case):
    make, reason = OVERSIZE[case]
    reply = http.post("/classify_dataset/submit", **make(dataset, None))
    assert reply.status_code == 413 and reason in reply.json()["error"], reply.text
    assert "task_id" not in reply.json()


def test_a_task_is_not_retried_from_a_stored_upload(http, dataset):
    task_id = submit(http, content=npy(dataset.test_images[:10]))
    assert follow(http, task_id)[-1]["status"] == "completed"
    reply = http.post("/classify_dataset/retry", params={"task_id": task_id})
    assert reply.status_code == 409 and "submit the file again" in reply.json()["error"]


@pytest.mark.parametrize(("route", "method"), [("progress", "GET"), ("cancel", "PUT")])
def test_unknown_task_ids_are_not_found(http, route, method):
    reply = http.request(method, f"/classify_dataset/{route}", params={"task_id": "nope"})
    assert reply.status_code == 404 and error_body(reply) == {"error": "task_id not found"}
    reply = http.request(method, f"/classify_dataset/{route}")
    assert reply.status_code == 400 and error_body(reply) == {"error": "task_id is required"}
