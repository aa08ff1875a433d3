"""``python -m tests.offline_install``: the offline install docs/gpu.md gives, timed, from the wheelhouse to ready.

``make wheelhouse`` for this machine's Python, then a clean venv, then ``pip install --no-index --find-links``
of the extra (no index reachable), then: with the ``client`` extra, the client's command answers ``--help``;
with a ``serve`` extra (``serve``, ``serve-onnx``), ``bentoml serve`` of the service from that venv, outside the
checkout, until ``/readyz`` answers 200. Writes ``results/offline-install-<extra>.txt`` with the time of each step.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark.harness import REPO, free_port, private_home, start_process, write_results


def timed(step: str, command: list[str], times: dict[str, float], **options) -> None:
    """Run ``command``; record its seconds under ``step``; fail with its output if it fails."""
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **options)
    times[step] = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"{step} failed ({result.returncode}): {' '.join(command)}\n{result.stdout[-3000:]}"
                         f"{result.stderr[-3000:]}")


def check_install(extra: str, work: Path) -> dict[str, float]:
    """The steps above, each timed; raises SystemExit naming the step that failed."""
    times: dict[str, float] = {}
    wheels, venv = work / "wheelhouse", work / "venv"
    version = ".".join(platform.python_version_tuple()[:2])
    timed("make wheelhouse", ["make", "wheelhouse", f"WHEELHOUSE={wheels}", f"EXTRA={extra}",
                              f"PYTHON_VERSION={version}"], times, cwd=REPO)
    timed("clean venv", [sys.executable, "-m", "venv", str(venv)], times)
    python = venv / "bin" / "python"
    # No index at all: PIP_* settings of this machine (its own index, find-links) are dropped too.
    offline = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    timed("offline pip install", [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                                  str(wheels), f"fashion-serve[{extra}]"], times, env=offline, cwd=work)
    if extra == "client":
        timed("fashion-classify --help", [str(venv / "bin" / "fashion-classify"), "--help"], times, cwd=work)
        return times
    port = free_port()
    began = time.perf_counter()
    server = start_process([str(python), "-m", "bentoml", "serve", "service.service:FashionClassifier", "--host",
                            "127.0.0.1", "--port", str(port)], f"http://127.0.0.1:{port}", work / "serve.log",
                           {"BENTOML_HOME": str(private_home(work)), "PYTHONPATH": ""}, cwd=work)
    try:
        server.wait_ready(timeout=600)
        times["bentoml serve until ready"] = time.perf_counter() - began
    finally:
        server.stop()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.offline_install", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extra", choices=["client", "serve", "serve-onnx"], default="client", help="default: client")
    parser.add_argument("--out", type=Path, default=None, help="folder for the timings (default: results/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="offline-install-") as tmp:
        times = check_install(args.extra, Path(tmp))
    lines = [f"Offline install of fashion-serve[{args.extra}] ({platform.node()}, Python "
             f"{platform.python_version()}), written by `python -m tests.offline_install --extra {args.extra}`:"]
    lines += [f"{step}: {seconds:.1f} s" for step, seconds in times.items()]
    print(write_results(f"offline-install-{args.extra}.txt", "\n".join(lines), folder=args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
