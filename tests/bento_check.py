"""``make bento-check``: each built Bento profile serves on its own, as a user deploys it.

For each profile (``--profiles``, default ``full onnx``; :data:`PROFILES` names their bentofiles):

1. ``bentoml build -f <bentofile>`` into a throwaway BentoML home that sees the registered models;
2. a fresh virtual environment from the built Bento's ``env/python/requirements.txt`` only (pip's cache may
   be used);
3. ``bentoml serve`` of the built Bento from a directory outside the checkout, with the checkout off
   ``sys.path`` (no PYTHONPATH, a neutral working directory);
4. ``/readyz`` 200, then one real test image through every backend the profile carries, each giving the offline
   model's label; the others refused with a 4xx naming the loaded ones; ``/model_info`` and ``/v2/models`` saying
   which; BentoML's own client on every endpoint; one inference over gRPC (``FASHION_GRPC_PORT``, tritonclient's
   gRPC client) giving the same label. The GPU variant (``onnx-gpu``) is served with
   ``FASHION_DEVICE=cuda``: on a machine without a GPU every backend must fall back to the CPU.

Prints its total time and writes it to ``--out`` (default results/bento-check.txt).
Run: ``python -m tests.bento_check [--models ~/bentoml/models] [--profiles full onnx] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from benchmark.harness import free_port

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "fashion" / "samples" / "9-ankle-boot-test0.png"  # test image 0 of Fashion-MNIST
READY_TIMEOUT_S = 600  # a hang guard: the Bento loads and warms up five backends in about a minute here
# The Bento profiles: one bentofile each, built with `bentoml build -f` (docs/deploy.md, "Profiles").
PROFILES = {"full": "bentofile.yaml", "onnx": "bentofile-onnx.yaml", "onnx-gpu": "bentofile-onnx-gpu.yaml"}
# What `make bento-check` and CI check: the GPU variant's CUDA wheels are a separate, optional install.
DEFAULT_PROFILES = ("full", "onnx")


REPORT: list[str] = []  # every line printed, written to --out at the end


def say(line: str) -> None:
    """Print a line and keep it for the results file."""
    print(line, flush=True)
    REPORT.append(line)


def step(message: str, started: float) -> None:
    """One line of progress with the time since the start."""
    say(f"[{time.monotonic() - started:7.1f} s] {message}")


def profile_backends(profile: str) -> list[str]:
    """The backends a profile's Bento serves: those whose runtime module its bentofile ships."""
    from fashion.backends import BACKENDS

    excluded = yaml.safe_load((REPO / PROFILES[profile]).read_text()).get("exclude", [])
    return [name for name, spec in BACKENDS.items()
            if f"fashion/backends/{spec.runtime}_runtime.py" not in excluded]


def build_bento(home: Path, profile: str = "full") -> Path:
    """``bentoml build -f <profile's bentofile>`` of the checkout into ``home``; returns the built Bento's folder."""
    env = {**os.environ, "BENTOML_HOME": str(home)}
    out = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "build", str(REPO), "-f",
                          str(REPO / PROFILES[profile]), "--output", "tag"],
                         env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
    tag = re.findall(r"__tag__:(\S+)", out)[-1]
    name, version = tag.split(":")
    return home / "bentos" / name / version


def make_venv(venv: Path, requirements: Path) -> Path:
    """A new virtual environment with exactly the Bento's requirements; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    return python


def offline_labels(models: Path, backends: list[str]) -> dict[str, str]:
    """The label each of ``backends``' exported model gives IMAGE, loaded in this process from the store."""
    sys.path.insert(0, str(REPO))
    from fashion.backends import BACKENDS, load_artifact
    from fashion.contract import CLASS_NAMES, preprocess
    from fashion.imaging import decode_image

    pixels = decode_image(IMAGE.read_bytes())[None]
    labels = {}
    for name in backends:
        spec = BACKENDS[name]
        model_dir = max((models / spec.model).glob("*/"), key=lambda p: p.stat().st_mtime)
        logits = load_artifact(model_dir, spec.artifact, spec.runtime, device="cpu").predict(preprocess(pixels))
        labels[name] = CLASS_NAMES[int(logits.argmax(1)[0])]
    return labels


def serve(python: Path, bento: Path | str, home: Path, workdir: Path, port: int,
          extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """``bentoml serve`` of the built Bento (its folder in the store) from ``workdir``, with nothing of the checkout
    importable; a ``"module:Class"`` string serves that service from ``workdir`` instead."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("FASHION_")}
    env.update(BENTOML_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3", PATH=f"{python.parent}:{env.get('PATH', '')}",
               **(extra_env or {}))
    log = open(workdir / "serve.log", "w")  # noqa: SIM115 (closed by the caller's process exit)
    tag = bento if isinstance(bento, str) else f"{bento.parent.name}:{bento.name}"
    return subprocess.Popen([str(python.parent / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port",
                             str(port)], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Until ``/readyz`` answers 200; fails with the server's log if it exits or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the Bento's server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url}/readyz not 200 within {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def check_backends(url: str, expected: dict[str, str]) -> list[str]:
    """Classify IMAGE with every backend; the mismatches (empty when all agree with the offline models)."""
    wrong = []
    for backend, label in expected.items():
        reply = httpx.post(f"{url}/classify", params={"backend": backend}, timeout=60,
                           files={"images": (IMAGE.name, IMAGE.read_bytes(), "image/png")})
        got = reply.json()[0]["label"] if reply.status_code == 200 else f"HTTP {reply.status_code}: {reply.text}"
        say(f"  {backend:11s} {got} (offline: {label})")
        if got != label:
            wrong.append(backend)
    return wrong


def check_profile(url: str, loaded: list[str]) -> list[str]:
    """What the server says it serves, and how it refuses the rest; the failures (empty when all hold).

    ``/model_info`` and ``/v2/models`` name exactly ``loaded``; every other backend is refused with a 4xx that names
    the loaded ones, natively (400) and on v2 (404).
    """
    from fashion.backends import BACKENDS

    failures = []
    info = httpx.post(f"{url}/model_info", timeout=30).json()
    if info["installed_backends"] != loaded or sorted(info["backends"]) != sorted(loaded):
        failures.append(f"/model_info: installed {info['installed_backends']}, configured {list(info['backends'])}")
    ready = [m["name"] for m in httpx.get(f"{url}/v2/models", timeout=30).json()["models"] if m["state"] == "READY"]
    if ready != loaded:
        failures.append(f"/v2/models: READY {ready}")
    for name in (n for n in BACKENDS if n not in loaded):
        native = httpx.post(f"{url}/classify", params={"backend": name}, timeout=30,
                            files={"images": (IMAGE.name, IMAGE.read_bytes(), "image/png")})
        v2 = httpx.get(f"{url}/v2/models/{name}", timeout=30)
        say(f"  {name:11s} refused: {native.status_code} {error_of(native)!r}; v2 {v2.status_code}")
        for reply, status in ((native, 400), (v2, 404)):
            if reply.status_code != status or str(sorted(loaded)) not in error_of(reply):
                failures.append(f"{name}: {reply.request.url} answered {reply.status_code} {reply.text[:200]}")
    return failures


def error_of(reply: httpx.Response) -> str:
    """The message of a JSON refusal: ``{"error": ...}``, or the first of a list of answers (a native endpoint's
    refusal of one image, as the per-image answers carry it)."""
    body = reply.json()
    return (body[0] if isinstance(body, list) else body).get("error", "")


def check_client(url: str, backend: str) -> list[str]:
    """BentoML's own clients on every endpoint, each answer compared with the same request made with httpx;
    the failures (empty when all agree)."""
    import bentoml
    import numpy as np

    from fashion.imaging import decode_image

    pixels = decode_image(IMAGE.read_bytes())[None]
    raw = httpx.post(f"{url}/classify", data={"backend": backend}, timeout=30,
                     files={"images": (IMAGE.name, IMAGE.read_bytes(), "image/png")}).json()
    failures = []
    with bentoml.SyncHTTPClient(url, timeout=60) as client:
        answers = {"classify": client.classify(images=[IMAGE], backend=backend),
                   "classify_batch": client.classify_batch(images=[IMAGE], backend=backend),
                   "classify_array": client.classify_array(pixels=pixels, backend=backend)}
        failures += [f"{name} answered {got!r}" for name, got in answers.items() if got != raw]
        if not client.parity()["consistent"]:
            failures.append("parity: not consistent")
        if not client.model_info()["ready"]:
            failures.append("model_info: not ready")

    async def task(folder: Path) -> dict:
        np.save(folder / "images.npy", pixels)
        async with bentoml.AsyncHTTPClient(url, timeout=60) as client:
            submitted = await client.classify_dataset.submit(images=folder / "images.npy", backend=backend)
            deadline = time.monotonic() + READY_TIMEOUT_S  # a hang guard: one image takes well under a second
            while (await submitted.get_status()).value == "in_progress" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            return await submitted.get()

    with tempfile.TemporaryDirectory() as folder:
        result = asyncio.run(task(Path(folder)))
    if result.get("labels") != [raw[0]["label"]]:
        failures.append(f"classify_dataset answered {str(result)[:300]}")
    say(f"  BentoML's client: classify, classify_batch, classify_array, parity, model_info, classify_dataset "
        f"{'failed: ' + '; '.join(failures) if failures else 'agree with httpx'}")
    return failures


def check_grpc(target: str, backend: str, expected: str) -> list[str]:
    """One inference of IMAGE over the Bento's gRPC port with tritonclient's gRPC client; the failures."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from fashion.contract import CLASS_NAMES
    from fashion.imaging import decode_image

    client = grpcclient.InferenceServerClient(target)
    tensor = grpcclient.InferInput("images", [1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(decode_image(IMAGE.read_bytes())[None].astype(np.uint8))
    result = client.infer(backend, [tensor], outputs=[grpcclient.InferRequestedOutput("logits")])
    label = CLASS_NAMES[int(result.as_numpy("logits").argmax(1)[0])]
    say(f"  gRPC {backend}: {label} ({'ok' if label == expected else f'expected {expected}'})")
    return [] if label == expected else [f"gRPC {backend}: {label}, expected {expected}"]


def check_cpu_fallback(url: str) -> list[str]:
    """Served with FASHION_DEVICE=cuda on a machine without a GPU: every backend on the CPU, and /model_info
    says so; the failures."""
    info = httpx.post(f"{url}/model_info", timeout=30).json()
    devices = {name: (facts["device_requested"], facts["device"]) for name, facts in info["backends"].items()}
    say(f"  FASHION_DEVICE=cuda, gpu_present {info['gpu_present']}: (requested, device) {devices}")
    return [f"{name}: {pair}" for name, pair in devices.items() if pair != ("cuda", "cpu")] \
        if not info["gpu_present"] else []


# What CI builds the Bento around: the test suite's quick models (the best preset, 3,000 images, 2 epochs).
QUICK_MODELS = """
import sys
from pathlib import Path
from export.pipeline import export_run
from export.store import register_model
from fashion.data import load_fashion_mnist
from training.config import get_preset
from training.run import FRAMEWORKS, train_run
work, data = Path(sys.argv[1]), load_fashion_mnist()
config = get_preset("best", epochs=2, limit=3000, seed=0)
for framework in FRAMEWORKS:
    run = train_run(framework, "best", config, out=work / "runs", data=data, progress=False)
    register_model(export_run(run, data, work / "artifacts"))
"""


def make_quick_models(work: Path) -> Path:
    """Train, export and register quick models in a store of their own; returns its models folder.

    A process of its own: BentoML binds its store to ``BENTOML_HOME`` when first used.
    """
    home = work / "quick-home"
    subprocess.run([sys.executable, "-c", QUICK_MODELS, str(work)], cwd=REPO, check=True,
                   env={**os.environ, "BENTOML_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3", "TQDM_DISABLE": "1"})
    return home / "models"


def check_one(profile: str, models: Path, home: Path, work: Path, started: float) -> list[str]:
    """Build, install and serve one profile's Bento and check it; the failures (empty when it passed)."""
    bento = build_bento(home, profile)
    step(f"{profile}: built {bento.parent.name}:{bento.name} from {PROFILES[profile]}", started)
    requirements = bento / "env" / "python" / "requirements.txt"
    python = make_venv(work / f"venv-{profile}", requirements)
    step(f"{profile}: fresh venv from the Bento's {len(requirements.read_text().splitlines())}-line "
         "requirements.txt", started)
    loaded = profile_backends(profile)
    expected = offline_labels(models, loaded)
    port, grpc_port, outside = free_port(), free_port(), work / f"outside-{profile}"
    outside.mkdir(exist_ok=True)
    gpu_variant = profile.endswith("-gpu")
    extra_env = {"FASHION_GRPC_PORT": str(grpc_port), "FASHION_GRPC_HOST": "127.0.0.1",
                 **({"FASHION_DEVICE": "cuda"} if gpu_variant else {})}
    proc = serve(python, bento, home, outside, port, extra_env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, outside / "serve.log")
        step(f"{profile}: /readyz 200", started)
        failures = check_backends(url, expected) + check_profile(url, loaded) + check_client(url, "onnx-tf")
        failures += check_grpc(f"127.0.0.1:{grpc_port}", "onnx-tf", expected["onnx-tf"])
        if gpu_variant:
            failures += check_cpu_fallback(url)
    finally:
        proc.terminate()
        proc.wait(30)
    say(f"{profile}: {'FAILED: ' + '; '.join(failures) if failures else 'passed'} ({len(loaded)} backends)")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("BENTOML_HOME", "~/bentoml")) / "models",
                        help="the BentoML model store holding the exported models (default: $BENTOML_HOME/models "
                             "or ~/bentoml/models)")
    parser.add_argument("--quick", action="store_true",
                        help="build around freshly trained quick models instead of --models (what CI does)")
    parser.add_argument("--profiles", nargs="+", choices=list(PROFILES), default=list(DEFAULT_PROFILES),
                        help=f"the profiles to check, in order (default: {' '.join(DEFAULT_PROFILES)})")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temporary "
                                                                "folder, removed at the end)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bento-check.txt",
                        help="where the timing line goes (default: results/bento-check.txt)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bento-check-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = make_quick_models(work) if args.quick else args.models.expanduser().resolve()
        if args.quick:
            step("quick models trained, exported and registered", started)
        home = work / "bentoml-home"
        home.mkdir(exist_ok=True)
        if not (home / "models").exists():
            (home / "models").symlink_to(models)
        failed = [profile for profile in args.profiles if check_one(profile, models, home, work, started)]
    total = time.monotonic() - started
    verdict = "FAILED: " + ", ".join(failed) if failed else "passed"
    say(f"make bento-check {verdict} in {total:.0f} s (profiles {' '.join(args.profiles)}, "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)")
    if not failed:
        args.out.write_text("\n".join(REPORT) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
