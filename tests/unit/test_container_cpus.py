"""The default thread count comes from the container's CPU quota (cgroup v2 or v1), read from fake files here."""

from __future__ import annotations

import os

import pytest

from fashion.env import available_cpus, cgroup_cpu_limit


def cores() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("files", "limit"), [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
], ids=["v2-quota", "v2-unlimited", "v1-quota", "v1-cpuacct", "v1-unlimited", "no-cgroup"])
def test_the_quota_is_read_from_cgroup_v2_and_v1(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_threads_follow_the_quota_rounded_up_and_capped_by_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(cores() + 3) * 100000} 100000\n")
    assert available_cpus(tmp_path) == cores()
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == cores()


def test_an_unreadable_quota_falls_back_to_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("garbage 100000\n")
    assert available_cpus(tmp_path) == cores()
