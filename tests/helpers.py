"""Test helpers (fixtures live in conftest.py): waits that say what they waited for, servers, request bodies."""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from benchmark.harness import Server, free_port, start
from fashion.backends import BACKENDS, load_artifact
from fashion.contract import preprocess, softmax, temperature_of
from fashion.imaging import decode_image
from fashion.manifest import read_manifest
from fashion.samples import sample_paths

T = TypeVar("T")
__all__ = ["free_port"]  # re-exported for the tests: one free_port, the lab harness's
REPO = Path(__file__).resolve().parents[1]


def wait_until(probe: Callable[[], T], what: str, timeout: float, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    Args:
        probe: the check; its truthy result ends the wait.
        what: the awaited state, in words, for the error raised at the deadline.
        timeout: seconds before giving up (a hang guard, far above the expected wait).
        interval: seconds between probes.

    Raises:
        TimeoutError: naming ``what`` and ``timeout`` when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(interval)
    return result


def error_body(reply) -> dict:
    """A JSON error answer without its ``request_id`` (each request's own, service.telemetry)."""
    return {key: value for key, value in reply.json().items() if key != "request_id"}


def batch_histogram(url: str) -> tuple[float, float]:
    """(model calls, images) so far, from the server's ``fashion_batch_size`` histogram on /metrics."""
    import httpx

    series = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in httpx.get(f"{url}/metrics").text
              .splitlines() if line.startswith("fashion_batch_size_")}
    return series["fashion_batch_size_count"], series["fashion_batch_size_sum"]


def queued_jobs(hold: Path) -> int:
    """Jobs the held batcher has queued, as it writes them to ``<hold>.queued`` (0 before it wrote any)."""
    counter = hold.with_name(hold.name + ".queued")
    return int(counter.read_text() or 0) if counter.exists() else 0


@contextlib.contextmanager
def held_batcher(hold: Path) -> Iterator[None]:
    """While inside, the server started with ``FASHION_BATCH_HOLD_FILE=hold`` starts no model call.

    The hold is always lifted on the way out, so a failing test cannot stall the next one.
    """
    hold.with_name(hold.name + ".queued").unlink(missing_ok=True)
    hold.touch()
    try:
        yield
    finally:
        hold.unlink(missing_ok=True)


def model_dir(exported, backend: str) -> Path:
    """The exported model folder that serves ``backend``."""
    return exported["torch" if BACKENDS[backend].model.endswith("torch") else "tf"]


def offline_probabilities(exported, backend: str, path: Path) -> np.ndarray:
    """The ten probabilities the exported artifact gives this image, computed here without the service."""
    spec = BACKENDS[backend]
    predictor = load_artifact(model_dir(exported, backend), spec.artifact, spec.runtime, device="cpu")
    temperature = temperature_of(read_manifest(model_dir(exported, backend)))  # served probabilities are calibrated
    return softmax(predictor.predict(preprocess(decode_image(path.read_bytes()))), temperature)[0]


def npy(array, allow_pickle: bool = False) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (a request body)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npz(**arrays) -> bytes:
    """``arrays`` as the bytes of a compressed ``.npz`` file."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def start_server(home: Path, workdir: Path, extra_env: dict[str, str] | None = None) -> Server:
    """``bentoml serve`` (benchmark.harness) over the models of the BentoML store at ``home``; not yet waited for."""
    return start(Path(workdir), env=extra_env, models=Path(home) / "models")


def store_with(exported, tmp_path, tamper: str | None = None):
    """A BentoML store (a new home under ``tmp_path``) holding copies of the exported models.

    ``tamper``: ``"<framework>/<file>"`` whose byte 100 is flipped first (e.g. ``"tf/model.onnx"``).
    Registered from a separate process: this session's BentoML store is already bound to another home.
    """
    import shutil
    import subprocess
    import sys

    copies = []
    for framework, model_dir in exported.items():
        copies.append(tmp_path / framework)
        shutil.copytree(model_dir, copies[-1])
    if tamper:
        target = tmp_path / tamper
        payload = bytearray(target.read_bytes())
        payload[100] ^= 0xFF
        target.write_bytes(bytes(payload))
    home = tmp_path / "store"
    subprocess.run([sys.executable, "-c", "import sys; from export.store import register_model as r; "
                    "[r(p) for p in sys.argv[1:]]", *map(str, copies)],
                   env={**os.environ, "BENTOML_HOME": str(home)}, check=True, cwd=REPO)
    return home


# Bad requests and the documented status each gets: (route, httpx request arguments, status).
def encode_image(image_format: str, width: int = 28, height: int = 28) -> bytes:
    """A real image in ``image_format`` (Pillow reads PCX, but the service must not)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format=image_format)
    return buffer.getvalue()


def npy_pickled(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


SAMPLE = sample_paths()[0].read_bytes()
BAD_INPUTS = {
    "empty body": ("/classify", {"content": b"", "headers": {"Content-Type": "image/png"}}, 400),
    "wrong field": ("/classify", {"files": {"file": ("a.png", SAMPLE, "image/png")}}, 400),
    "random bytes labelled png": ("/classify", {"files": {"images": ("a.png", bytes(range(256)) * 8, "image/png")}},
                                  415),
    "text file": ("/classify", {"files": {"images": ("a.txt", b"hello, world\n", "text/plain")}}, 415),
    "truncated png": ("/classify", {"files": {"images": ("a.png", SAMPLE[: len(SAMPLE) // 2], "image/png")}}, 422),
    "unsupported format": ("/classify", {"files": {"images": ("a.pcx", encode_image("PCX"), "image/png")}}, 415),
    "over the pixel limit": ("/classify",
                             {"files": {"images": ("big.png", encode_image("PNG", 4000, 4000), "image/png")}}, 413),
    "oversize body": ("/classify", {"content": b"\x89PNG" + bytes(9 * 1024 * 1024),
                                    "headers": {"Content-Type": "image/png"}}, 413),
    "too many images": ("/classify_batch", {"files": [("images", ("a.png", SAMPLE, "image/png"))] * 1025}, 413),
    "url instead of a file": ("/classify", {"data": {"images": "http://127.0.0.1:9/x.png"}, "files": {"x": ("", b"")}},
                              400),
    "wrong array shape": ("/classify_array", {"json": {"pixels": [[1, 2, 3]]}}, 422),
    "wrong array dtype": ("/classify_array", {"json": {"pixels": np.full((1, 28, 28), 0.5).tolist()}}, 422),
    "nan values": ("/classify_array", {"content": npy_pickled(np.full((1, 28, 28), np.nan)),
                                       "headers": {"Content-Type": "application/x-npy"}}, 422),
    "object npy": ("/classify_array", {"content": npy_pickled(np.array([{"a": 1}], dtype=object)),
                                       "headers": {"Content-Type": "application/x-npy"}}, 422),
    "invalid json": ("/classify_array", {"content": b"{", "headers": {"Content-Type": "application/json"}}, 400),
    "unknown backend": ("/classify", {"files": {"images": ("a.png", SAMPLE, "image/png")},
                                      "params": {"backend": "../../etc/passwd"}}, 400),
    "pickle content type": ("/classify_array", {"content": b"\x80\x04K\x01.",
                                                "headers": {"Content-Type": "application/vnd.bentoml+pickle"}}, 415),
    "json to an upload endpoint": ("/classify", {"json": {"images": ["a"]}}, 415),
}


def images(*firsts: int) -> np.ndarray:
    """``uint8[n, 28, 28]`` blank images whose first pixels are ``firsts`` (fake models echo them back)."""
    pixels = np.zeros((len(firsts), 28, 28), np.uint8)
    pixels[:, 0, 0] = firsts
    return pixels
