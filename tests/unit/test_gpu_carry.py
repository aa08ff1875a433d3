"""Carrying wheels to a GPU server in pieces: split here, stash per call there, join, check."""

from __future__ import annotations

import json
import os

import pytest

from benchmark.gpu import carry


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """Fake wheels (incompressible bytes), a BentoML-style model store and the two test files."""
    monkeypatch.setattr(carry, "wrk_files", lambda: [])
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl", "bentoml-1.4.40-py3-none-any.whl"):
        (wheels / name).write_bytes(os.urandom(300_000))
    models = tmp_path / "models"
    for name in ("fashion-mlp-torch", "fashion-mlp-tf"):
        (models / name / "v2").mkdir(parents=True)
        (models / name / "v1").mkdir()
        (models / name / "latest").write_text("v2")
        for file in ("manifest.json", "model.onnx", "saved_model.pb"):
            (models / name / "v2" / file).write_text(file)
    data = tmp_path / "data"
    data.mkdir()
    for name in carry.TEST_FILES:
        (data / name).write_bytes(os.urandom(1000))
    return wheels, models, data


def test_pieces_rejoin_into_the_same_wheels(sources, tmp_path):
    wheels, models, data = sources
    out, device = tmp_path / "carry", tmp_path / "device"
    plan = carry.prepare(wheels, models, data, out, budget=200_000)
    assert plan["calls"] >= 4 and all(p["size"] <= 200_000 for p in plan["pieces"])
    last = out / f"call{plan['calls']}" / "inputs"
    # Only the latest version and the artifacts the GPU runs load travel; no SavedModel.
    assert sorted(p.name for p in (last / "models" / "fashion-mlp-torch").iterdir()) == ["latest", "v2"]
    assert sorted(p.name for p in (last / "models" / "fashion-mlp-torch" / "v2").iterdir()) == [
        "manifest.json", "model.onnx"]
    for call in range(1, plan["calls"] + 1):
        carry.stash(out / f"call{call}", device)
    unpacked = carry.assemble(device)
    for wheel in wheels.iterdir():
        assert (unpacked / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()


def test_a_missing_or_damaged_piece_is_named(sources, tmp_path):
    wheels, models, data = sources
    out, device = tmp_path / "carry", tmp_path / "device"
    plan = carry.prepare(wheels, models, data, out, budget=200_000)
    carry.stash(out / "call1", device)
    with pytest.raises(carry.CarryError, match="piece-2"):
        carry.assemble(device)
    damaged = out / "call2" / "piece-2"
    intact = damaged.read_bytes()
    # Flip the first byte's bits: overwriting it with a fixed byte left the piece intact whenever the
    # (random) byte already was that one, 1 run in 256, and then nothing raised.
    damaged.write_bytes(bytes([intact[0] ^ 0xFF]) + intact[1:])
    with pytest.raises(carry.CarryError, match="checksum"):
        carry.stash(out / "call2", device)
    assert json.loads((device / "plan.json").read_text())["bundle_sha256"] == plan["bundle_sha256"]


def test_packages_the_image_has_are_recognised_by_normalised_name():
    present = carry.device_packages()
    assert {"markdown-it-py", "typing-extensions", "numpy", "torch"} <= present
    assert carry.dist_name("markdown_it_py-4.3.0-py3-none-any.whl") == "markdown-it-py"
    assert "onnxruntime-gpu" not in present and "bentoml" not in present
