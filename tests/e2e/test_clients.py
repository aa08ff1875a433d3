"""The Python client and the batch CLI: unit tier with a mock transport, then against the real service."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from clients.__main__ import main as cli
from clients.client import AsyncFashionClient, FashionClient, RetryPolicy, ServiceError
from fashion.backends import load_artifact
from fashion.contract import preprocess
from fashion.data import IDX_FILES, idx_file_path
from fashion.imaging import encode_png
from fashion.manifest import read_manifest
from tests.helpers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
ANSWER = [{"class_id": 9, "label": "Ankle boot", "confidence": 0.9,
           "top_k": [{"class_id": 9, "label": "Ankle boot", "probability": 0.9}], "backend": "onnx-torch",
           "model_version": "v1"}]


def scripted(statuses: list[int]):
    """A mock transport answering the given statuses in turn (then 200s); records the calls."""
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        status = statuses[len(calls) - 1] if len(calls) <= len(statuses) else 200
        return httpx.Response(status, json=ANSWER if status == 200 else [{"error": f"status {status}"}])

    return httpx.MockTransport(handle), calls


@pytest.mark.parametrize("status", [429, 503, 504])
def test_retries_only_retryable_statuses(status):
    transport, calls = scripted([status, status])
    client = FashionClient("http://test", transport=transport, retry=RetryPolicy(base_delay=0.001))
    assert client.classify(np.zeros((28, 28), np.uint8)).label == "Ankle boot"
    assert len(calls) == 3 and client.retry.retried == 2


@pytest.mark.parametrize("status", [400, 404, 413, 415, 422, 500])
def test_other_errors_are_raised_at_once(status):
    transport, calls = scripted([status])
    client = FashionClient("http://test", transport=transport, retry=RetryPolicy(base_delay=0.001))
    with pytest.raises(ServiceError) as err:
        client.classify(b"not an image")
    assert err.value.status == status and f"status {status}" in str(err.value)
    assert len(calls) == 1


def test_connection_errors_are_retried_then_raised():
    def refuse(request):
        raise httpx.ConnectError("refused")

    client = FashionClient("http://test", transport=httpx.MockTransport(refuse),
                           retry=RetryPolicy(attempts=3, base_delay=0.001))
    with pytest.raises(httpx.ConnectError):
        client.model_info()
    assert client.retry.retried == 2


def test_backoff_is_jittered_and_capped():
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    delays = [policy.delay(attempt) for attempt in range(10) for _ in range(20)]
    assert max(delays) <= 1.0 and len(set(delays)) > 100
    assert policy.delay(0, retry_after="0.5") >= 0.5


def test_async_client_chunks_and_keeps_order():
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        pixels = np.load(io.BytesIO(request.content))
        seen.append(len(pixels))
        return httpx.Response(200, json=[{**ANSWER[0], "class_id": int(p[0, 0])} for p in pixels])

    async def run():
        async with AsyncFashionClient("http://test", transport=httpx.MockTransport(handle)) as client:
            pixels = np.zeros((25, 28, 28), np.uint8)
            pixels[:, 0, 0] = np.arange(25)
            return await client.classify_many(pixels, chunk_size=10, concurrency=3)

    answers = asyncio.run(run())
    assert [a.class_id for a in answers] == list(range(25)) and sorted(seen) == [5, 10, 10]


# ---- against the real service -------------------------------------------------------------------------------


def offline(exported, pixels):
    predictor = load_artifact(exported["torch"], "onnx", "onnx", device="cpu")
    return predictor.predict(preprocess(pixels)).argmax(1)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_full_test_set_through_batch_matches_offline_model(server, exported, dataset, data_dir, tmp_path, capsys):
    images = idx_file_path(data_dir, IDX_FILES["test_images"])
    out = tmp_path / "preds.csv"
    assert cli(["--url", server, "batch", str(images), "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [f"{images.name}#{i}" for i in range(10000)]
    assert np.array_equal(np.array([int(r["class_id"]) for r in rows]), offline(exported, dataset.test_images))
    manifest = read_manifest(exported["torch"])
    printed = capsys.readouterr().out
    assert f"accuracy {manifest['artifacts']['onnx']['test_accuracy']:.4f}" in printed
    assert (tmp_path / "preds.confusion.png").stat().st_size > 0


def test_folder_with_bad_files_classifies_every_good_image(server, dataset, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "Ankle boot").mkdir(parents=True)
    (folder / "misc" / "deep").mkdir(parents=True)
    for i in range(12):
        (folder / "Ankle boot" / f"{i}.png").write_bytes(encode_png(dataset.test_images[i]))
    (folder / "misc" / "deep" / "ok.png").write_bytes(encode_png(dataset.test_images[20]))
    (folder / "misc" / "notes.txt").write_text("not an image")
    (folder / "misc" / "cut.png").write_bytes(encode_png(dataset.test_images[0])[:40])
    (folder / "misc" / "deep" / "noise.jpg").write_bytes(os.urandom(500))
    out = tmp_path / "preds.jsonl"
    assert cli(["--url", server, "batch", str(folder), "--out", str(out), "--quiet", "--batch-size", "4"]) == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 13
    errors = read_rows(tmp_path / "preds.errors.csv")
    assert sorted(e["id"] for e in errors) == ["misc/cut.png", "misc/deep/noise.jpg", "misc/notes.txt"]
    assert all(e["reason"] for e in errors)
    assert "total 16, ok 13, failed 3" in capsys.readouterr().out
    assert cli(["--url", server, "batch", str(folder), "--out", str(tmp_path / "x.csv"), "--quiet",
                "--fail-fast"]) == 2
    assert not (tmp_path / "x.csv").exists()


def _batch_process(server, source, out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "clients", "--url", server, "batch", str(source), "--out", str(out), "--quiet",
         "--batch-size", "64", "--concurrency", "2", *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


class Proxy:
    """Forwards to the real service, with faults injected: a 503 to every ``fail_every``-th request, and every
    POST (a classify call) after the first ``hold_after`` held unanswered until the proxy closes.

    It forwards no ``Accept`` header, as some proxies do: the batch CLI then gets JSON answers, and copes.
    """

    def __init__(self, target: str, fail_every: int = 0, hold_after: int | None = None) -> None:
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        self.count = 0
        self.posts = 0
        self.injected = 0
        self.closing = threading.Event()

        async def forward(request):
            self.count += 1
            if fail_every and self.count % fail_every == 0:
                self.injected += 1
                return Response('[{"error": "injected"}]', status_code=503, media_type="application/json")
            self.posts += request.method == "POST"
            while hold_after is not None and self.posts > hold_after and not self.closing.is_set():
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(base_url=target, timeout=60) as client:
                upstream = await client.request(request.method, request.url.path, params=request.query_params,
                                                content=await request.body(),
                                                headers={"content-type": request.headers.get("content-type", "")})
            return Response(upstream.content, status_code=upstream.status_code,
                            media_type=upstream.headers.get("content-type"))

        self.app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])

    def __enter__(self) -> str:
        import uvicorn

        port = free_port()
        # log_config=None: uvicorn must not bind its loggers to pytest's captured (then closed) stderr.
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), "the proxy's uvicorn to start", 30,
                   interval=0.01)
        assert self.server.started, "the proxy's uvicorn thread ended without starting"
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self.server.should_exit = True
        self.thread.join(10)


def journal_lines(journal: Path) -> int:
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def test_sigkill_halfway_then_resume_equals_an_uninterrupted_run(server, dataset, tmp_path):
    source = tmp_path / "test.npz"
    np.savez(source, images=dataset.test_images[:6000], labels=dataset.test_labels[:6000])
    reference = tmp_path / "reference.csv"
    assert _batch_process(server, source, reference).wait(300) == 0
    out = tmp_path / "resumed.csv"
    journal = tmp_path / "resumed.csv.journal"
    # 6,000 images in chunks of 64 make 94 journal lines. The proxy answers 30 requests, then holds the rest:
    # the job is killed part-way, every time, however fast or slow the machine.
    with Proxy(server, hold_after=30) as url:
        proc = _batch_process(url, source, out)
        try:
            wait_until(lambda: journal_lines(journal) >= 30, "30 journal lines (30 answered chunks)", 300)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert not out.exists() and journal.exists()
    done = journal_lines(journal)
    assert 30 <= done < 94, done
    resumed = _batch_process(server, source, out, "--resume")
    stdout, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0
    assert out.read_bytes() == reference.read_bytes()
    ids = [r["id"] for r in read_rows(out)]
    assert len(ids) == len(set(ids)) == 6000
    assert b"taken from the journal" in stdout and not journal.exists()


def test_injected_503s_are_retried_until_every_input_is_classified(server, exported, dataset, tmp_path, capsys):
    source = tmp_path / "part.npy"
    np.save(source, dataset.test_images[:2000])
    out = tmp_path / "preds.csv"
    with Proxy(server, fail_every=3) as url:
        # Every third request fails, so one chunk could meet a few 503s in a row: allow 10 attempts.
        code = cli(["--url", url, "batch", str(source), "--out", str(out), "--quiet", "--batch-size", "100",
                    "--retries", "10"])
    assert code == 0
    rows = read_rows(out)
    assert np.array_equal([int(r["class_id"]) for r in rows], offline(exported, dataset.test_images[:2000]))
    printed = capsys.readouterr().out
    retried = int(printed.split("retried ")[1].split(",")[0])
    assert retried >= 6  # 20 chunks: at least a third of the first tries were refused


def test_server_down_at_start_is_a_clear_failure(tmp_path, dataset, capsys):
    source = tmp_path / "part.npy"
    np.save(source, dataset.test_images[:10])
    out = tmp_path / "preds.csv"
    code = cli(["--url", f"http://127.0.0.1:{free_port()}", "batch", str(source), "--out", str(out), "--quiet"])
    assert code == 2 and not out.exists()
    assert "is not reachable" in capsys.readouterr().err


def test_local_mode_writes_the_same_output_as_the_service(server, exported, dataset, tmp_path):
    source = tmp_path / "part.npy"
    np.save(source, dataset.test_images[:3000])
    remote, local = tmp_path / "remote.csv", tmp_path / "local.csv"
    assert cli(["--url", server, "batch", str(source), "--out", str(remote), "--quiet"]) == 0
    model = str(exported["torch"])
    assert cli(["batch", str(source), "--out", str(local), "--quiet", "--local", "--model", model]) == 0
    assert local.read_bytes() == remote.read_bytes()


def test_classify_command_prints_a_table(server, capsys):
    from fashion.samples import sample_paths

    paths = [str(p) for p in sample_paths()[:3]]
    assert cli(["--url", server, "classify", *paths]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(p in line for p, line in zip(paths, printed, strict=True))
