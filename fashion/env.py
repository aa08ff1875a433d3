"""Hardware and library versions, stamped into runs, manifests and reports."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
from pathlib import Path

# Where Linux shows a container its CPU quota (service threads, batch --local calls: available_cpus).
CGROUP_ROOT = Path("/sys/fs/cgroup")

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


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the container may use by its CFS quota, or ``None`` when unlimited or unknown.

    cgroup v2: ``cpu.max`` holds ``"<quota> <period>"`` or ``"max <period>"``. cgroup v1:
    ``cpu/cpu.cfs_quota_us`` (``-1``: unlimited) over ``cpu/cpu.cfs_period_us`` (also mounted as
    ``cpu,cpuacct``). Kubernetes turns a container's ``limits.cpu`` into this quota, while
    ``os.cpu_count()`` still reports every core of the node.
    """
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        return None if quota == "max" or not period else int(quota) / int(period)
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            return None if quota <= 0 else quota / int((v1 / "cpu.cfs_period_us").read_text())
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process may use: the cgroup quota (rounded up), capped by the CPUs it is pinned to."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        limit = cgroup_cpu_limit(root)
    except (OSError, ValueError):  # an unreadable or odd file: fall back to the cores, never fail to start
        limit = None
    return max(1, min(cores, math.ceil(limit))) if limit else cores
