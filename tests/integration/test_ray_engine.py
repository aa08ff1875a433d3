"""``batch --engine ray`` on a local Ray cluster: the CLI's answers, and nothing lost when a worker dies.

One Ray instance (2 CPUs, its temp folder under the test's, no dashboard) serves the whole module: starting
one costs 10-20 s on a 2-core machine. The jobs join it instead of starting their own.
"""

from __future__ import annotations

import csv
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from clients.__main__ import main as cli
from clients.batch import JobConfig, JobError
from clients.ray_engine import ATTEMPTS, RayConfig, parts_folder, run_ray_job
from fashion.contract import CLASS_NAMES
from fashion.imaging import encode_png
from tests.helpers import wait_until

pytest.importorskip("ray.data", reason="Ray Data is an optional extra: pip install 'fashion-serve[ray]'")

SHARDS = 4


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import ray

    temp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, _temp_dir=str(temp), include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, dataset):
    """The 10,000 test images as PNG files in class-named folders, and two files that are not images."""
    root = tmp_path_factory.mktemp("ray-images") / "test"
    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True)
    for i, (pixels, label) in enumerate(zip(dataset.test_images, dataset.test_labels, strict=True)):
        (root / CLASS_NAMES[label] / f"{i:05d}.png").write_bytes(encode_png(pixels))
    (root / CLASS_NAMES[0] / "00007-bad.png").write_bytes(b"not a png")
    (root / CLASS_NAMES[9] / "zz-bad.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def npz_shards(tmp_path_factory, dataset):
    """The 10,000 test images and their labels as :data:`SHARDS` .npz files in one folder."""
    root = tmp_path_factory.mktemp("ray-shards")
    for k, (images, labels) in enumerate(zip(np.array_split(dataset.test_images, SHARDS),
                                             np.array_split(dataset.test_labels, SHARDS), strict=True)):
        np.savez(root / f"test-{k}.npz", images=images, labels=labels)
    return root


def local(args: list[str], out: Path, model: Path) -> int:
    return cli(["batch", *args, "--out", str(out), "--local", "--model", str(model), "--quiet"])


def on_ray(args: list[str], out: Path, model: Path, *extra: str) -> int:
    return cli(["batch", *args, "--out", str(out), "--engine", "ray", "--model", str(model), "--quiet", *extra])


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_an_image_folder_gives_the_clis_output_byte_for_byte(ray_cluster, exported, image_folder, tmp_path):
    model = exported["torch"]
    assert local([str(image_folder)], tmp_path / "cli.csv", model) == 1
    assert on_ray([str(image_folder)], tmp_path / "ray.csv", model, "--shard-size", "2048") == 1
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "cli.csv").read_bytes()
    assert (tmp_path / "ray.errors.csv").read_bytes() == (tmp_path / "cli.errors.csv").read_bytes()
    assert len(rows(tmp_path / "ray.csv")) == 10_000
    assert not parts_folder(tmp_path / "ray.csv").exists()


def test_array_shards_answer_row_for_row_like_the_cli_on_the_idx_file(ray_cluster, exported, data_dir, npz_shards,
                                                                    tmp_path):
    model = exported["torch"]
    assert local([str(Path(data_dir) / "t10k-images-idx3-ubyte.gz")], tmp_path / "cli.csv", model) == 0
    assert on_ray([str(npz_shards)], tmp_path / "ray.csv", model) == 0
    cli_rows, ray_rows = rows(tmp_path / "cli.csv"), rows(tmp_path / "ray.csv")
    assert len(ray_rows) == len(cli_rows) == 10_000
    per_shard = 10_000 // SHARDS
    assert [r.pop("id") for r in ray_rows] == [f"test-{i // per_shard}.npz#{i % per_shard}" for i in range(10_000)]
    for row in cli_rows:
        del row["id"]
    assert ray_rows == cli_rows


def attempt_pid(parts: Path) -> int | None:
    """The process id in the name of the first attempt folder a worker made (``<shard>.<pid>.<host>.<random>``)."""
    attempts = sorted((parts / ATTEMPTS).glob("*.*.*")) if (parts / ATTEMPTS).exists() else []
    return int(attempts[0].name.split(".")[1]) if attempts else None


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_worker_killed_mid_shard_loses_nothing(ray_cluster, exported, npz_shards, tmp_path):
    model, job = exported["torch"], JobConfig(batch_size=250, progress=False)
    reference = tmp_path / "reference.csv"
    run_ray_job([str(npz_shards)], reference, str(model), None, job, RayConfig())
    pause, out = tmp_path / "pause", tmp_path / "killed.csv"
    pause.touch()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_ray_job([str(npz_shards)], out, str(model), None, job, RayConfig(pause_file=pause))
        except BaseException as exc:
            failure.append(exc)

    runner = threading.Thread(target=run, name="ray-job")
    runner.start()
    try:
        # The worker has made its attempt folder (its pid in the name) and waits at its first model call.
        pid = wait_until(lambda: attempt_pid(parts_folder(out)), "a worker to start a shard", timeout=120)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: gone(pid), f"worker {pid} to die", timeout=30)
        assert not any(p.name.isdigit() for p in parts_folder(out).iterdir()), "a shard committed while paused"
    finally:
        pause.unlink()
        runner.join(timeout=300)
    assert not runner.is_alive(), "the job did not finish within 300 s of the pause being lifted"
    assert not failure, failure
    assert out.read_bytes() == reference.read_bytes()
    ids = [r["id"] for r in rows(out)]
    assert len(ids) == len(set(ids)) == 10_000


def test_a_stopped_job_resumes_from_its_committed_shards(ray_cluster, exported, dataset, tmp_path):
    model = exported["torch"]
    folder = tmp_path / "in"
    (folder / "Dress").mkdir(parents=True)
    for i in range(600):
        (folder / "Dress" / f"{i:03d}.png").write_bytes(encode_png(dataset.test_images[i]))
    (folder / "Dress" / "250-bad.png").write_bytes(b"not a png")  # in the third shard of 100
    assert local([str(folder)], tmp_path / "cli.csv", model) == 1
    out, args = tmp_path / "ray.csv", [str(folder), "--shard-size", "100"]
    # The bad file stops the job once its shard is committed (--fail-fast); the others may or may not be.
    assert on_ray(args, out, model, "--fail-fast") == 2
    assert (parts_folder(out) / "00002").is_dir() and not out.exists()
    assert on_ray(args, out, model) == 2, "a second run without --resume must refuse to mix with the first"
    with pytest.raises(JobError, match="--resume"):
        run_ray_job([str(folder)], out, str(model), None, JobConfig(progress=False), RayConfig(shard_size=100))
    summary = run_ray_job([str(folder)], out, str(model), None, JobConfig(resume=True, progress=False),
                          RayConfig(shard_size=100))
    assert summary.resumed >= 100 and summary.total == 601 and summary.failed == 1
    assert out.read_bytes() == (tmp_path / "cli.csv").read_bytes()
    assert (tmp_path / "ray.errors.csv").read_bytes() == (tmp_path / "cli.errors.csv").read_bytes()


def test_a_truncated_shard_fails_the_job_and_keeps_the_others(ray_cluster, exported, dataset, tmp_path, capsys):
    np.save(tmp_path / "a.npy", dataset.test_images[:300])
    np.save(tmp_path / "b.npy", dataset.test_images[300:600])
    with (tmp_path / "b.npy").open("r+b") as fh:
        fh.truncate(fh.seek(0, os.SEEK_END) - 784 * 10)
    out = tmp_path / "out.csv"
    assert on_ray([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], out, exported["torch"]) == 2
    assert "truncated" in capsys.readouterr().err
    assert parts_folder(out).is_dir() and not (parts_folder(out) / "00001").exists()
    assert not out.exists()
