"""The GPU benchmark: ``python -m benchmark.gpu`` (on a GPU server: ``benchmark/gpu.sh``, see docs/gpu.md).

Stages, each a key of the results (a stage that fails is recorded with its error, the rest run on):

* ``ceilings``  -- the card's matmul rate per precision and the host-to-device copy rate for uint8;
* ``inprocess`` -- ONNX Runtime's CUDA provider (both exports, with and without I/O binding) and torch
  on CUDA (eager fp32/TF32/fp16/bf16, CUDA graphs, torch.compile), batch 1 to 65,536, each
  checked on all 10,000 test images against fp32;
* ``endtoend``  -- uint8 in host memory to answers in host memory, the test set and 1 M synthetic;
* ``diagnose``  -- where the time goes: each layer's matmul alone, copies alone against the model alone;
* ``service``   -- ``bentoml serve`` on the CPU, then on the GPU: /model_info, wrk, parity;
* ``cli``       -- ``python -m clients batch --local`` over the test set.

Results accumulate in a state file, so stages can run over several device calls while the machine
stays warm; every run writes the report from everything the state holds. ``--device cpu`` is a dry
run with CPU stand-ins: its report is named and titled as one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.gpu.endtoend import EndToEndPlan
from benchmark.gpu.serving import ServicePlan
from benchmark.gpu.variants import InprocessPlan
from benchmark.harness import Budget

STAGES = ("ceilings", "inprocess", "endtoend", "diagnose", "service", "cli")
DEVICE_DIR = Path("/tmp/fashion-gpu")


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of every stage for one device."""

    matmul_n: int
    copy_bytes: int
    repeats: int
    inprocess: InprocessPlan
    endtoend: EndToEndPlan
    service: ServicePlan
    diagnose_batch: int = 65536
    diagnose_precisions: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16")
    cli_backends: tuple[str, ...] = ("onnx-torch", "torch")


GPU_PLAN = Plan(
    matmul_n=8192, copy_bytes=256 * 2**20, repeats=10,
    inprocess=InprocessPlan(batch_sizes=(1, 8, 64, 512, 4096, 16384, 65536),
                            budget=Budget(warmup_seconds=0.1, min_calls=20, min_seconds=0.2, max_calls=5000)),
    endtoend=EndToEndPlan(chunk=65536, synthetic=1_000_000, repeats=3),
    service=ServicePlan(seconds=4.0, batch_seconds=4.0),
)
# The dry run: the same stages, small, on the CPU. fp16 matmuls have no fast CPU kernels, and
# compiling a bf16 graph on two cores takes minutes, so the stand-in compiles fp32.
CPU_PLAN = Plan(
    matmul_n=512, copy_bytes=32 * 2**20, repeats=3,
    inprocess=InprocessPlan(batch_sizes=(1, 64, 1024), budget=Budget(warmup_seconds=0.02, min_calls=5,
                                                                      min_seconds=0.05, max_calls=200),
                            precisions=("fp32", "tf32", "bf16"), graph_precisions=(), compile_precision="fp32"),
    endtoend=EndToEndPlan(chunk=4096, synthetic=50_000, repeats=1, precisions=("fp32", "bf16")),
    service=ServicePlan(concurrency=(1, 4), seconds=1.0, batch_seconds=4.0, warmup=0.5),
    diagnose_batch=1024, diagnose_precisions=("fp32", "bf16"),
)


def load_test_set(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images and labels, checked against the official checksums."""
    from fashion.data import IDX_FILES, read_idx

    def find(spec):
        return next(p for name in (spec.name, spec.name + ".gz") if (p := data_dir / name).is_file())

    return (read_idx(find(IDX_FILES["test_images"]), IDX_FILES["test_images"]),
            read_idx(find(IDX_FILES["test_labels"]), IDX_FILES["test_labels"]))


def gpu_name(device: str) -> str | None:
    """The CUDA device's name when the run is on one."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(0)


def run_stage(name: str, device: str, plan: Plan, inputs: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """One stage's results; an exception becomes ``{"error": ...}`` so the other stages still run."""
    from benchmark.gpu import ceilings, diagnose, endtoend, serving, variants
    from benchmark.gpu.report import copy_images_per_s

    images, labels, dirs = inputs["images"], inputs["labels"], inputs["model_dirs"]
    print(f"stage {name} on {device}", flush=True)
    try:
        if name == "ceilings":
            return ceilings.measure_ceilings(device, plan.matmul_n, plan.copy_bytes, plan.repeats)
        if name == "inprocess":
            return variants.run_variants(dirs, images, labels, device, plan.inprocess)
        if name == "endtoend":
            return endtoend.run_endtoend(dirs["fashion-mlp-torch"], images, labels, device, plan.endtoend,
                                         copy_images_per_s(state))
        if name == "diagnose":
            synthetic = np.resize(images, (plan.endtoend.synthetic, *images.shape[1:]))
            return diagnose.run_diagnosis(dirs["fashion-mlp-torch"], inputs["layer_sizes"], synthetic, device,
                                          plan.diagnose_batch, plan.endtoend.chunk, plan.diagnose_precisions,
                                          plan.repeats)
        if name == "service":
            return serving.run_service(inputs["models"], images, device, plan.service)
        return serving.run_cli(dirs, inputs["data_dir"], device, plan.cli_backends)
    except Exception as exc:  # one broken stage (say, BentoML missing) must not cost the others their run
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def cuda_available() -> bool:
    """Whether torch can use a CUDA device in this process."""
    import torch

    return torch.cuda.is_available()


def runtime_facts() -> dict[str, Any]:
    """Which onnxruntime and torch this process really imported (a carried wheel must shadow the image's)."""
    facts: dict[str, Any] = {}
    try:
        import onnxruntime as ort

        facts["onnxruntime"] = {"version": ort.__version__, "file": ort.__file__,
                                "available_providers": ort.get_available_providers()}
    except ImportError as exc:
        facts["onnxruntime"] = {"error": str(exc)}
    import torch

    facts["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available":
                      torch.cuda.is_available()}
    return facts


def new_state(device: str, argv: list[str]) -> dict[str, Any]:
    """An empty results state stamped with the machine and libraries."""
    from fashion.env import environment_stamp

    return {"device": device, "gpu": gpu_name(device), "environment": environment_stamp(),
            "runtimes": runtime_facts(), "command": "python -m benchmark.gpu " + shlex.join(argv),
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": 0.0, "stages": {}}


def default_models() -> Path:
    """The BentoML store's models folder (``$BENTOML_HOME/models``, default ``~/bentoml/models``)."""
    return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "models"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda (default), or cpu for a dry run with CPU stand-ins")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="default: all")
    parser.add_argument("--models", type=Path, default=None,
                        help="a BentoML store's models folder (<name>/latest, <name>/<version>/); default: the store's")
    parser.add_argument("--data", type=Path, default=None, help="folder with the t10k IDX files (default: found)")
    parser.add_argument("--out", type=Path, required=True, help="folder for benchmark-<gpu>.md/.json/.png")
    parser.add_argument("--state", type=Path, default=None,
                        help=f"results carried between calls (default {DEVICE_DIR}/state-<device>.json)")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing state: run every stage anew")
    parser.add_argument("--carry-log", type=Path, default=None, help="what benchmark/gpu.sh installed (for the report)")
    return parser.parse_args(argv)


def load_inputs(models: Path, data_dir: Path) -> dict[str, Any]:
    """Test images and labels, the exported model folders and the model's layer sizes."""
    from benchmark.inprocess import model_dirs_from
    from fashion.manifest import read_manifest

    dirs = model_dirs_from(models)
    images, labels = load_test_set(data_dir)
    return {"images": images, "labels": labels, "model_dirs": dirs, "models": models, "data_dir": data_dir,
            "layer_sizes": read_manifest(dirs["fashion-mlp-torch"])["architecture"]["layer_sizes"],
            "versions": {name: read_manifest(path)["version"] for name, path in dirs.items()}}


def kept_stages(state_path: Path, versions: dict[str, str]) -> dict[str, Any]:
    """Stages an earlier call finished, from the state file, if it measured these same models."""
    if not state_path.exists():
        return {}
    saved = json.loads(state_path.read_text())
    return saved["stages"] if saved.get("models") == versions else {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from benchmark.gpu.report import write_report
    from benchmark.inprocess import flops_per_image
    from fashion.data import find_data_dir

    if args.device == "cuda" and not cuda_available():
        print("error: torch sees no CUDA device here; --device cpu runs the dry run", file=sys.stderr)
        return 2
    start = time.perf_counter()
    # Absolute: the service's BentoML home links to the models, and a relative link would dangle.
    inputs = load_inputs((args.models or default_models()).resolve(),
                         (args.data or find_data_dir(download=False)).resolve())
    state_path = args.state or DEVICE_DIR / f"state-{args.device}.json"
    state = new_state(args.device, argv)
    state |= {"flops_per_image": flops_per_image(inputs["layer_sizes"]), "models": inputs["versions"],
              "stages": {} if args.fresh else kept_stages(state_path, inputs["versions"])}
    if args.carry_log and args.carry_log.exists():
        state["carry"] = args.carry_log.read_text().strip()
    plan = GPU_PLAN if args.device == "cuda" else CPU_PLAN
    for name in [s for s in STAGES if s in args.stages]:
        if name in state["stages"] and "error" not in state["stages"][name]:
            print(f"stage {name}: kept from {state_path}", flush=True)
            continue
        state["stages"][name] = run_stage(name, args.device, plan, inputs, state)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(state, default=str))
        state["seconds"] = time.perf_counter() - start
        write_report(state, args.out)  # after every stage: a run cut short by its time limit still reports
    state["seconds"] = time.perf_counter() - start
    path = write_report(state, args.out)
    print(f"report: {path} ({state['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
