"""The service and the batch CLI on the GPU, each against its CPU counterpart on the same machine.

Service: ``bentoml serve`` from the checkout twice, one after the other (never together, so
neither steals the other's cores): ``FASHION_DEVICE=cpu``, then the device asked for. Each is
asked ``/model_info`` for the providers it really uses, driven by wrk with one PNG per request
and with 4,096 images per ``.npy`` request, and sent all 10,000 test images for the parity check.

Batch CLI: ``python -m clients batch --local`` over the test set's IDX file, timed as a user
runs it; its backend's providers read through the same loader the CLI uses.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashion.backends import BACKENDS
from fashion.imaging import encode_png

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ServicePlan:
    """What the service stage measures."""

    backends: tuple[str, ...] = ("onnx-torch", "torch")
    concurrency: tuple[int, ...] = (1, 16)
    batch_images: int = 4096
    batch_concurrency: int = 4
    seconds: float = 5.0
    batch_seconds: float = 5.0
    warmup: float = 1.0


def npy_bytes(pixels: np.ndarray) -> bytes:
    """A ``.npy`` body."""
    buffer = io.BytesIO()
    np.save(buffer, pixels, allow_pickle=False)
    return buffer.getvalue()


def service_env(device: str, plan: ServicePlan, home: Path) -> dict[str, str]:
    """The service's settings: backends, device, room for 4,096-image requests, a BentoML home of its own."""
    return {"FASHION_DEVICE": device, "FASHION_BACKENDS": ",".join(plan.backends),
            "FASHION_MAX_IMAGES": str(plan.batch_images), "FASHION_MAX_BODY_BYTES": str(16 * 2**20),
            "FASHION_MAX_QUEUED_IMAGES": str(plan.batch_images * 2 * plan.batch_concurrency),
            "BENTOML_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}


def start_service(device: str, plan: ServicePlan, models: Path, work: Path) -> tuple[subprocess.Popen, str]:
    """``bentoml serve`` on a free loopback port, ready (``/readyz``); returns (process, base URL)."""
    from benchmark import harness as launch

    env = {k: v for k, v in service_env(device, plan, work).items() if k != "BENTOML_HOME"}  # launch makes one
    server = launch.start(work, env=env, models=models)
    try:
        server.wait_ready(timeout=300)
    except BaseException:
        stop(server.proc)
        raise
    return server.proc, server.url


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server's process group and wait (bounded) for it."""
    import os
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def classify_all(url: str, backend: str, images: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """Every image through ``/classify_array`` as .npy: class ids, confidences, top-k ids and probabilities."""
    import httpx

    answers = []
    with httpx.Client(timeout=120) as client:
        for start in range(0, len(images), chunk):
            reply = client.post(f"{url}/classify_array", params={"backend": backend},
                                content=npy_bytes(images[start:start + chunk]),
                                headers={"content-type": "application/x-npy"})
            reply.raise_for_status()
            answers += reply.json()
    return {"class_id": np.array([a["class_id"] for a in answers]),
            "confidence": np.array([a["confidence"] for a in answers]),
            "top_ids": np.array([[t["class_id"] for t in a["top_k"]] for a in answers]),
            "top_p": np.array([[t["probability"] for t in a["top_k"]] for a in answers])}


def parity(device_answers: dict[str, np.ndarray], cpu_answers: dict[str, np.ndarray]) -> dict[str, Any]:
    """Identical top-1 (fraction) and max |Δp| over the top-k probabilities where the top-k ids agree."""
    same_top = (device_answers["top_ids"] == cpu_answers["top_ids"]).all(axis=1)
    dp = np.abs(device_answers["top_p"] - cpu_answers["top_p"])[same_top]
    return {"images": len(same_top), "identical_top1": float((device_answers["class_id"] ==
                                                               cpu_answers["class_id"]).mean()),
            "identical_top_k_ids": float(same_top.mean()), "max_abs_dp": float(dp.max()) if dp.size else None}


def drive(url: str, backend: str, bodies: dict[str, Path], plan: ServicePlan) -> list[dict[str, Any]]:
    """wrk: one PNG per request at each concurrency, then the 4,096-image .npy requests."""
    from benchmark.harness import run_wrk

    rows = []
    runs = [("single", c, f"{url}/classify?backend={backend}", 1, plan.seconds) for c in plan.concurrency]
    runs.append(("batch", plan.batch_concurrency, f"{url}/classify_array?backend={backend}", plan.batch_images,
                 plan.batch_seconds))
    for kind, concurrency, target, per_request, seconds in runs:
        path, content_type = bodies[kind]
        run_wrk(target, concurrency, plan.warmup, path, content_type=content_type, timeout=60)
        stats = run_wrk(target, concurrency, seconds, path, content_type=content_type, timeout=60)
        rows.append({"kind": kind, "backend": backend, "concurrency": concurrency, "rps": stats["rps"],
                     "images_per_s": stats["rps"] * per_request, "p50_ms": stats["p50_us"] / 1e3,
                     "p99_ms": stats["p99_us"] / 1e3, "statuses": stats["statuses"],
                     "socket_errors": stats["socket_errors"]})
        print(f"    {kind:<6} {backend:<11} c={concurrency:<3} {stats['rps']:>9,.0f} req/s "
              f"{rows[-1]['images_per_s']:>12,.0f} images/s p99 {rows[-1]['p99_ms']:8.2f} ms {stats['statuses']}",
              flush=True)
    return rows


def request_bodies(images: np.ndarray, plan: ServicePlan, work: Path) -> dict[str, tuple[Path, str]]:
    """The two wrk bodies: one PNG upload, and ``batch_images`` test images as .npy."""
    from benchmark.harness import multipart_body

    boundary = uuid.uuid4().hex
    single, batch = work / "single.bin", work / "batch.npy"
    single.write_bytes(multipart_body(encode_png(images[0]), boundary))
    batch.write_bytes(npy_bytes(np.resize(images, (plan.batch_images, *images.shape[1:]))))
    return {"single": (single, f"multipart/form-data; boundary={boundary}"), "batch": (batch, "application/x-npy")}


def run_service(models: Path, images: np.ndarray, device: str, plan: ServicePlan) -> dict[str, Any]:
    """CPU service, then the ``device`` service: model_info, wrk rows, answers; then parity per backend."""
    work = Path(tempfile.mkdtemp(prefix="fashion-gpu-service-"))
    bodies = request_bodies(images, plan, work)
    services, answers = {}, {}
    for label, asked in (("cpu", "cpu"), ("device", device)):
        print(f"  service with FASHION_DEVICE={asked}", flush=True)
        services[label] = {"requested": asked, "rows": []}
        try:
            measure_service(services[label], answers, label, models, images, plan, bodies, work)
        except Exception as exc:  # one service failing to start must not lose the other's rows
            services[label]["error"] = f"{type(exc).__name__}: {exc}"
        log = work / f"bentoml-{asked}.log"
        services[label]["log"] = log.read_text()[-4000:] if log.exists() else ""
    shutil.rmtree(work, ignore_errors=True)
    both = [b for b in plan.backends if ("device", b) in answers and ("cpu", b) in answers]
    return {"services": services, "plan": vars(plan),
            "parity": {b: parity(answers[("device", b)], answers[("cpu", b)]) for b in both}}


def measure_service(record: dict[str, Any], answers: dict, label: str, models: Path, images: np.ndarray,
                    plan: ServicePlan, bodies: dict[str, tuple[Path, str]], work: Path) -> None:
    """Start one service, read /model_info, drive it with wrk, collect its answers for parity; stop it."""
    import httpx

    started = time.perf_counter()
    proc, url = start_service(record["requested"], plan, models, work)
    try:
        info = httpx.post(f"{url}/model_info", timeout=30).json()
        record["start_s"] = time.perf_counter() - started
        record["model_info"] = {b: info["backends"].get(b, {}) for b in plan.backends}
        for backend in plan.backends:
            record["rows"] += drive(url, backend, bodies, plan)
            answers[(label, backend)] = classify_all(url, backend, images, plan.batch_images)
    finally:
        stop(proc)


def run_cli_once(model_dir: Path, images: Path, device: str, backend: str, out: Path) -> dict[str, Any]:
    """One ``batch --local`` job as a user runs it: exit code, wall time, accuracy from its CSV, providers."""
    from clients.local import LocalClassifier

    command = [sys.executable, "-m", "clients", "--backend", backend, "batch", str(images), "--local",
               "--model", str(model_dir), "--out", str(out), "--quiet"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - start
    row = {"backend": backend, "requested": device, "exit_code": result.returncode, "seconds": seconds,
           "command": " ".join(command[1:]), "output": (result.stdout + result.stderr)[-2000:],
           "ran_on": LocalClassifier.open(str(model_dir), backend).predictor.describe()}
    if result.returncode == 0:
        with out.open() as stream:
            answers = list(csv.DictReader(stream))
        row |= {"images": len(answers), "images_per_s": len(answers) / seconds,
                "accuracy": float(np.mean([a["class_id"] == a["true_label"] for a in answers]))}
    print(f"  batch --local {backend}: exit {result.returncode}, {seconds:.1f} s, "
          f"{row.get('images_per_s', 0):,.0f} images/s, ran on {row['ran_on']}", flush=True)
    return row


def run_cli(model_dirs: dict[str, Path], data_dir: Path, device: str, backends: tuple[str, ...]) -> dict[str, Any]:
    """``python -m clients batch --local`` over the test IDX file per backend: wall time, accuracy, providers."""
    images = next(data_dir.glob("t10k-images-idx3-ubyte*"))
    rows = []
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="fashion-gpu-cli-") as work:
            rows.append(run_cli_once(model_dirs[BACKENDS[backend].model], images, device, backend,
                                     Path(work) / "answers.csv"))
    return {"rows": rows}
