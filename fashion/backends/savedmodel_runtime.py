"""TensorFlow SavedModel backend, through its ``serving_default`` signature."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fashion.contract import INPUT_NAME, OUTPUT_NAME
from fashion.manifest import IntegrityError

SIGNATURE = "serving_default"

# A SavedModel holds no Python: ``tf.saved_model.load`` rebuilds graphs and functions and never
# unpickles (Keras Lambda layers' bytecode only exists in Keras's own formats, read by
# ``keras.models.load_model``, which we never call). But a graph is a program: its ops can read
# and write files (ReadFile, WriteFile, SaveV2 ...), and TensorFlow runs some at load (resource
# initialisers) and the serving signature at every call. TensorFlow's advice: a model is code
# (https://github.com/tensorflow/tensorflow/blob/master/SECURITY.md). So only the ops our export
# writes are accepted; a new TensorFlow or model shape that needs more fails loudly here first.
INFERENCE_OPS = frozenset({"AddV2", "Const", "Identity", "MatMul", "NoOp", "ReadVariableOp", "Relu", "Reshape",
                           "StatefulPartitionedCall"})
# Ops of ``tf.saved_model.save``'s own save/restore functions and of the TF1-style graph that calls them.
# ``tf.saved_model.load`` never runs those (it restores variables with ops it builds itself), so they
# may touch checkpoint files; any function the object graph reaches (what load and callers run) may not.
SAVER_OPS = frozenset({"AssignVariableOp", "DisableCopyOnRead", "MergeV2Checkpoints", "Pack", "Placeholder",
                       "RestoreV2", "SaveV2", "Select", "ShardedFilename", "StaticRegexFullMatch", "StringJoin",
                       "VarHandleOp"})


def configure_tensorflow(device: str = "auto", threads: int = 0) -> bool:
    """Threads, GPU visibility and memory growth; returns whether a GPU will be used.

    Must run before TensorFlow initialises; later calls leave settings as they are.
    """
    from fashion.env import has_nvidia_gpu

    use_gpu = device == "cuda" or (device == "auto" and has_nvidia_gpu())
    # TensorFlow's CUDA build logs a cuInit error on machines without a GPU (level 2);
    # there is no GPU to report on, so keep such a machine's logs clean.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if use_gpu else "3")
    import tensorflow as tf

    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        gpus = tf.config.list_physical_devices("GPU") if use_gpu else []
        if gpus:
            # Without memory growth TensorFlow reserves the whole GPU at start.
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
        else:
            tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        return bool(tf.config.get_visible_devices("GPU"))
    return bool(gpus)


def called_functions(node, library: dict) -> set[str]:
    """Names of the library functions one graph node calls (as its op, or through function attributes)."""
    names = {node.op} & library.keys()
    for value in node.attr.values():
        if value.HasField("func"):
            names.add(value.func.name)
        if value.HasField("list"):
            names.update(func.name for func in value.list.func)
    return names


def reachable_functions(roots: list[str], library: dict) -> set[str]:
    """Every library function the root functions call, directly or not."""
    seen: set[str] = set()
    todo = [name for name in roots if name in library]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [called for node in library[name].node_def for called in called_functions(node, library)]
    return seen


def check_savedmodel_ops(path: Path) -> None:
    """Refuse a SavedModel whose graphs hold ops our export never writes (see :data:`INFERENCE_OPS`).

    Raises:
        IntegrityError: naming the function and the unexpected ops.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto_path = Path(path) / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(proto_path.read_bytes())
    # Anything else goes through TensorFlow's TF1 loader, which runs the graph's own init and restore ops.
    if len(saved_model.meta_graphs) != 1 or not saved_model.meta_graphs[0].HasField("object_graph_def"):
        raise IntegrityError(f"{proto_path}: not a TF2 SavedModel with one object graph; refusing it")
    meta_graph = saved_model.meta_graphs[0]
    library = {function.signature.name: function for function in meta_graph.graph_def.library.function}
    reached = reachable_functions(list(meta_graph.object_graph_def.concrete_functions), library)
    nodes = {"graph": meta_graph.graph_def.node} | {f"function {name}": f.node_def for name, f in library.items()}
    unexpected = {}
    for where, node_defs in nodes.items():
        allowed = INFERENCE_OPS if where.removeprefix("function ") in reached else INFERENCE_OPS | SAVER_OPS
        ops = sorted({node.op for node in node_defs} - allowed - library.keys())
        if ops:
            unexpected[where] = ops
    if unexpected:
        found = "; ".join(f"{where}: {ops}" for where, ops in unexpected.items())
        raise IntegrityError(f"{proto_path}: holds ops that fashion-serve models never do ({found}); "
                             "a SavedModel's graphs run as code, so it is refused")


class SavedModelPredictor:
    """A loaded SavedModel called through its serving signature."""

    def __init__(self, module, on_gpu: bool) -> None:
        self.module = module
        self.signature = module.signatures[SIGNATURE]
        self.on_gpu = on_gpu

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.signature(**{INPUT_NAME: images})[OUTPUT_NAME].numpy()

    def describe(self) -> dict[str, Any]:
        import tensorflow as tf

        return {"runtime": "tensorflow", "device": "GPU:0" if self.on_gpu else "CPU:0",
                "visible_devices": [d.name for d in tf.config.get_visible_devices()]}


def load(path: Path, device: str = "auto", threads: int = 0, manifest: dict | None = None) -> SavedModelPredictor:
    """Load a SavedModel folder (already verified against its manifest) after checking the ops it holds."""
    on_gpu = configure_tensorflow(device, threads)
    check_savedmodel_ops(path)
    import tensorflow as tf

    return SavedModelPredictor(tf.saved_model.load(str(path)), on_gpu)
