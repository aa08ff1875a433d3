"""``make bento-check``: the built Bento serves on its own, as a user deploys it.

1. ``bentoml build`` into a throwaway BentoML home that sees the registered models;
2. a fresh virtual environment from the built Bento's ``env/python/requirements.txt`` only (pip's cache may
   be used);
3. ``bentoml serve`` of the built Bento from a directory outside the checkout, with the checkout off
   ``sys.path`` (no PYTHONPATH, a neutral working directory);
4. ``/readyz`` 200, then one real test image through every backend, each giving the offline model's label.

Prints its total time and writes it to ``--out`` (default results/bento-check.txt).
Run: ``python -m tests.bento_check [--models ~/bentoml/models] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from service.launch import free_port

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "fashion" / "samples" / "9-ankle-boot-test0.png"  # test image 0 of Fashion-MNIST
READY_TIMEOUT_S = 600  # a hang guard: the Bento loads and warms up five backends in about a minute here


REPORT: list[str] = []  # every line printed, written to --out at the end


def say(line: str) -> None:
    """Print a line and keep it for the results file."""
    print(line, flush=True)
    REPORT.append(line)


def step(message: str, started: float) -> None:
    """One line of progress with the time since the start."""
    say(f"[{time.monotonic() - started:7.1f} s] {message}")


def build_bento(home: Path) -> Path:
    """``bentoml build`` of the checkout into ``home``; returns the built Bento's folder."""
    env = {**os.environ, "BENTOML_HOME": str(home)}
    out = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "build", str(REPO), "--output", "tag"],
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


def offline_labels(models: Path) -> dict[str, str]:
    """The label each backend's exported model gives IMAGE, loaded in this process from the store."""
    sys.path.insert(0, str(REPO))
    from fashion.backends import BACKENDS, load_artifact
    from fashion.contract import CLASS_NAMES, preprocess
    from fashion.imaging import decode_image

    pixels = decode_image(IMAGE.read_bytes())[None]
    labels = {}
    for name, spec in BACKENDS.items():
        model_dir = max((models / spec.model).glob("*/"), key=lambda p: p.stat().st_mtime)
        logits = load_artifact(model_dir, spec.artifact, spec.runtime, device="cpu").predict(preprocess(pixels))
        labels[name] = CLASS_NAMES[int(logits.argmax(1)[0])]
    return labels


def serve(python: Path, bento: Path, home: Path, workdir: Path, port: int) -> subprocess.Popen:
    """``bentoml serve`` of the built Bento from ``workdir``, with nothing of the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(BENTOML_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3", PATH=f"{python.parent}:{env.get('PATH', '')}")
    log = open(workdir / "serve.log", "w")  # noqa: SIM115 (closed by the caller's process exit)
    tag = f"{bento.parent.name}:{bento.name}"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("BENTOML_HOME", "~/bentoml")) / "models",
                        help="the BentoML model store holding the exported models (default: $BENTOML_HOME/models "
                             "or ~/bentoml/models)")
    parser.add_argument("--quick", action="store_true",
                        help="build around freshly trained quick models instead of --models (what CI does)")
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
        bento = build_bento(home)
        step(f"built {bento.parent.name}:{bento.name}", started)
        requirements = bento / "env" / "python" / "requirements.txt"
        python = make_venv(work / "venv", requirements)
        step(f"fresh venv from the Bento's {len(requirements.read_text().splitlines())}-line requirements.txt",
             started)
        expected = offline_labels(models)
        port, outside = free_port(), work / "outside"
        outside.mkdir(exist_ok=True)
        proc = serve(python, bento, home, outside, port)
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc, outside / "serve.log")
            step("/readyz 200", started)
            wrong = check_backends(f"http://127.0.0.1:{port}", expected)
        finally:
            proc.terminate()
            proc.wait(30)
    total = time.monotonic() - started
    verdict = "FAILED: " + ", ".join(wrong) if wrong else "passed"
    say(f"make bento-check {verdict} in {total:.0f} s ({len(expected)} backends, {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores)")
    if not wrong:
        args.out.write_text("\n".join(REPORT) + "\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
