"""Model integrity: tampered, missing, escaping or code-carrying artifacts are refused before they run.

The attacker here can write into the model folder, manifest included: after crafting a file
these tests rewrite its SHA-256 in ``manifest.json``, so only the runtimes' own checks stand.
Every case is checked twice: ``load_artifact`` raises, and the service's registry stays not
ready with the reason in its ``error``.
"""

from __future__ import annotations

import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest

from fashion.backends import BACKENDS, load_artifact
from fashion.manifest import IntegrityError, checksum_tree, read_manifest, write_manifest
from service.config import ServiceConfig
from service.registry import ModelRegistry

ONNX_BACKENDS = ["onnx-torch", "onnx-tf"]


def copy_model(exported: dict[str, Path], backend: str, tmp_path: Path) -> Path:
    """A private copy of the model folder that serves ``backend``, safe to tamper with."""
    framework = "torch" if BACKENDS[backend].model.endswith("torch") else "tf"
    copy = tmp_path / "model"
    shutil.copytree(exported[framework], copy, symlinks=True)
    if BACKENDS[backend].artifact not in read_manifest(copy)["artifacts"]:
        pytest.skip("int8 model dropped by the export for exceeding its accuracy bound (see manifest)")
    return copy


def entry_of(model_dir: Path, backend: str) -> dict:
    return read_manifest(model_dir)["artifacts"][BACKENDS[backend].artifact]


def biggest_file(model_dir: Path, backend: str) -> Path:
    """The artifact's largest file: the weights, whichever format."""
    return max((model_dir / name for name in entry_of(model_dir, backend)["sha256"]), key=lambda p: p.stat().st_size)


def rewrite_checksums(model_dir: Path, backend: str, **changes) -> None:
    """What an attacker with write access does after crafting a file: make the manifest agree with it."""
    manifest = read_manifest(model_dir)
    entry = manifest["artifacts"][BACKENDS[backend].artifact]
    entry.update(changes)
    if "sha256" not in changes:
        entry["sha256"] = checksum_tree(model_dir, entry["path"])
    write_manifest(model_dir, manifest)


def load(model_dir: Path, backend: str):
    spec = BACKENDS[backend]
    return load_artifact(model_dir, spec.artifact, spec.runtime, device="cpu", threads=1)


def registry_error(model_dir: Path, backend: str) -> str:
    """The registry's reason for staying not ready (asserting that it does)."""
    registry = ModelRegistry(ServiceConfig(backends=(backend,), default_backend=backend, device="cpu", threads=1))
    registry.load_all({BACKENDS[backend].model: model_dir})
    assert not registry.ready and registry.error
    assert not registry.info()["backends"][backend]["loaded"]
    return registry.error


def assert_refused(model_dir: Path, backend: str, *fragments: str) -> str:
    """Both ways in refuse the model, and both messages hold every fragment; returns the loader's message."""
    with pytest.raises(IntegrityError) as caught:
        load(model_dir, backend)
    error = registry_error(model_dir, backend)
    for fragment in fragments:
        assert fragment in str(caught.value) and fragment in error, (fragment, str(caught.value), error)
    assert error.startswith("IntegrityError: ")
    return str(caught.value)


# 1. Tampered, missing, unlisted and escaping files (checksums and paths).

@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_flipped_byte_is_refused(exported, tmp_path, backend):
    model_dir = copy_model(exported, backend, tmp_path)
    victim = biggest_file(model_dir, backend)
    payload = bytearray(victim.read_bytes())
    payload[len(payload) // 2] ^= 0x01
    victim.write_bytes(bytes(payload))
    assert_refused(model_dir, backend, str(victim), "does not match the manifest")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_missing_file_is_refused(exported, tmp_path, backend):
    model_dir = copy_model(exported, backend, tmp_path)
    victim = biggest_file(model_dir, backend)
    victim.unlink()
    assert_refused(model_dir, backend, str(victim), "missing")


@pytest.mark.parametrize("backend", ["torch", "savedmodel"])
def test_a_missing_manifest_is_refused(exported, tmp_path, backend):
    model_dir = copy_model(exported, backend, tmp_path)
    (model_dir / "manifest.json").unlink()
    assert_refused(model_dir, backend, str(model_dir / "manifest.json"), "missing")


def test_a_manifest_that_is_not_json_is_refused(exported, tmp_path):
    model_dir = copy_model(exported, "torch", tmp_path)
    (model_dir / "manifest.json").write_text("{not json")
    assert_refused(model_dir, "torch", "manifest.json", "not valid JSON")


def test_an_entry_that_checks_nothing_is_refused(exported, tmp_path):
    model_dir = copy_model(exported, "onnx-torch", tmp_path)
    rewrite_checksums(model_dir, "onnx-torch", sha256={})
    assert_refused(model_dir, "onnx-torch", "'model.onnx'", "lists no checksum")


def move_outside(model_dir: Path, backend: str, how: str) -> str:
    """Move the artifact out of its folder, then point the manifest (or a link) at it; returns what escapes."""
    path = entry_of(model_dir, backend)["path"]
    outside = model_dir.parent / "outside"
    outside.mkdir()
    shutil.move(model_dir / path, outside / path)
    if how == "symlink":
        (model_dir / path).symlink_to(outside / path, target_is_directory=(outside / path).is_dir())
        return path
    new_path = f"../outside/{path}" if how == "relative" else str(outside / path)
    rewrite_checksums(model_dir, backend, path=new_path,
                      sha256={new_path + key.removeprefix(path): digest
                              for key, digest in entry_of(model_dir, backend)["sha256"].items()})
    return new_path


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
@pytest.mark.parametrize("backend", ["torch", "onnx-tf", "savedmodel"])
def test_a_path_escaping_the_model_folder_is_refused(exported, tmp_path, backend, how):
    model_dir = copy_model(exported, backend, tmp_path)
    escaping = move_outside(model_dir, backend, how)
    assert_refused(model_dir, backend, escaping, "points outside the model folder")


@pytest.mark.parametrize("what", ["file", "symlinked folder"])
def test_unlisted_entries_in_the_savedmodel_folder_are_refused(exported, tmp_path, what):
    model_dir = copy_model(exported, "savedmodel", tmp_path)
    if what == "file":
        (model_dir / "saved_model" / "variables" / "extra.txt").write_text("not from the export")
        name = "saved_model/variables/extra.txt"
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "vocab.txt").write_text("read by an asset initializer")
        (model_dir / "saved_model" / "assets").mkdir(exist_ok=True)
        (model_dir / "saved_model" / "assets" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        name = "saved_model/assets/linked"
    assert_refused(model_dir, "savedmodel", "files not in the manifest", name)


# 2. A PyTorch checkpoint carrying code.

class RunsAtLoad:
    """Unpickling this runs a shell command: ``__reduce__`` names the callable pickle will call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def write_checkpoint(path: Path, fmt: str, payload: RunsAtLoad) -> None:
    import torch

    state = {"1.weight": torch.zeros(2), "x": payload}
    if fmt == "raw pickle":
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=(fmt == "torch.save zip"))


def prove_it_runs(path: Path, fmt: str) -> None:
    import torch

    if fmt == "raw pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)


@pytest.mark.parametrize(("fmt", "reason"), [
    ("torch.save zip", "holds objects other than tensors"),
    ("torch.save legacy", "not a torch.save zip checkpoint"),
    ("raw pickle", "not a torch.save zip checkpoint"),
])
def test_a_checkpoint_carrying_code_is_refused_without_running_it(exported, tmp_path, fmt, reason):
    model_dir = copy_model(exported, "torch", tmp_path)
    marker = tmp_path / "code-ran"
    write_checkpoint(model_dir / "model.pt", fmt, RunsAtLoad(marker))
    rewrite_checksums(model_dir, "torch")
    # Unpickled without torch's guard, this file does run its code: the payload is live.
    prove_it_runs(model_dir / "model.pt", fmt)
    assert marker.exists()
    marker.unlink()
    message = assert_refused(model_dir, "torch", str(model_dir / "model.pt"), reason)
    assert not marker.exists()
    assert "weights_only` set to `False`" not in message  # torch's advice, wrong for a service


# 3. ONNX external data: a model may not make ONNX Runtime read other files.

def externalize_weights(model_dir: Path, location: str, data_file: Path) -> None:
    """Move the biggest initializer's bytes into ``data_file``, referenced from the model as ``location``."""
    import onnx

    path = model_dir / "model.onnx"
    model = onnx.load(path)
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data_file.write_bytes(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": str(data_file.stat().st_size)}.items():
        tensor.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("where", ["../../outside.bin", "absolute", "symlink out", "inside, unlisted"])
@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_external_data_is_refused_before_onnx_runtime_opens_the_model(exported, tmp_path, monkeypatch,
                                                                      backend, where):
    model_dir = copy_model(exported, backend, tmp_path / "a" / "b")
    outside = tmp_path / "outside.bin"
    location, data_file = {
        "../../outside.bin": ("../../outside.bin", outside),
        "absolute": (str(outside), outside),
        "symlink out": ("weights.bin", outside),
        "inside, unlisted": ("weights.bin", model_dir / "weights.bin"),
    }[where]
    externalize_weights(model_dir, location, data_file)
    if where == "symlink out":
        (model_dir / "weights.bin").symlink_to(outside)
    rewrite_checksums(model_dir, backend)
    import onnxruntime

    opened = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *args, **kwargs: opened.append(args))
    assert_refused(model_dir, backend, str(model_dir / "model.onnx"), repr(location), "external")
    assert not opened


def test_external_data_is_found_in_subgraphs_attributes_and_sparse_tensors():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from fashion.backends.onnx_runtime import external_data_tensors

    def external(name: str, location: str) -> TensorProto:
        tensor = numpy_helper.from_array(np.zeros(4, np.float32), name)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)
        return tensor

    constant = helper.make_node("Constant", [], ["c"], value=external("in_branch", "branch.bin"))
    branch = helper.make_graph([constant], "then", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])])
    sparse = helper.make_sparse_tensor(external("sparse_values", "sparse.bin"),
                                       numpy_helper.from_array(np.arange(4, dtype=np.int64), "idx"), [8])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], sparse_initializer=[sparse])
    found = external_data_tensors(helper.make_model(graph))
    assert sorted(found) == [("in_branch", "branch.bin"), ("in_branch", "branch.bin"), ("sparse_values", "sparse.bin")]


def test_the_external_data_check_loads_the_model_without_the_onnx_package(exported):
    """The check reads the schema only: importing the ``onnx`` package (and ml_dtypes with it) would cost more
    than the rest of the ``onnx`` Bento's start (fashion.backends.onnx_runtime.onnx_schema)."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from fashion.backends.onnx_runtime import load; "
            f"print(load(Path({str(exported['torch'] / 'model.onnx')!r}), device='cpu').predict.__name__); "
            "print(sorted(m for m in ('onnx', 'ml_dtypes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120).stdout.split()
    assert out == ["predict", "[]"]


# 4. A SavedModel's graph is code too: ops that touch files are refused before TensorFlow runs them.

def save_file_writing_savedmodel(path: Path, marker: Path) -> None:
    """A SavedModel whose resource initialiser, run by ``tf.saved_model.load`` itself, writes ``marker``."""
    import tensorflow as tf

    class WritesAtLoad(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

        def _initialize(self):
            tf.io.write_file(str(marker), "written by tf.saved_model.load\n")

    class Module(tf.Module):
        def __init__(self) -> None:
            self.resource = WritesAtLoad()

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)])
        def serve(self, images):
            return {"logits": tf.zeros([tf.shape(images)[0], 10])}

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def test_a_savedmodel_that_writes_files_at_load_is_refused_before_it_loads(exported, tmp_path):
    import tensorflow as tf

    model_dir = copy_model(exported, "savedmodel", tmp_path)
    marker = tmp_path / "written-at-load"
    shutil.rmtree(model_dir / "saved_model")
    save_file_writing_savedmodel(model_dir / "saved_model", marker)
    # Loaded by TensorFlow directly, the graph does write the file: the payload is live.
    tf.saved_model.load(str(model_dir / "saved_model"))
    assert marker.exists()
    marker.unlink()
    rewrite_checksums(model_dir, "savedmodel")
    assert_refused(model_dir, "savedmodel", str(model_dir / "saved_model" / "saved_model.pb"), "'WriteFile'")
    assert not marker.exists()


def test_the_exported_savedmodel_holds_only_the_allowed_ops(exported):
    from fashion.backends.savedmodel_runtime import check_savedmodel_ops

    check_savedmodel_ops(exported["tf"] / "saved_model")  # raises if the export needs an op not yet listed
