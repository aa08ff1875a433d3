"""Hardware and library versions, stamped into runs, manifests and reports."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

LIBRARIES = ("numpy", "torch", "tensorflow", "keras", "onnx", "onnxruntime-gpu", "tf2onnx", "bentoml")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names``; missing ones are left out."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def environment_stamp() -> dict[str, object]:
    """CPU, core count, platform and library versions (GPU facts are added by whoever uses one)."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "libraries": library_versions(),
    }


def has_nvidia_gpu() -> bool:
    """True when an NVIDIA GPU and its driver are present.

    Checked from the driver's files rather than by asking a framework: asking
    onnxruntime-gpu or TensorFlow for CUDA on a machine without a GPU fills the
    logs with CUDA errors.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()
