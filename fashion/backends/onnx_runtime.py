"""ONNX Runtime backend."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from fashion.contract import INPUT_NAME, OUTPUT_NAME
from fashion.env import has_nvidia_gpu
from fashion.manifest import IntegrityError


class OnnxPredictor:
    """An ``InferenceSession`` with the contract's input and output names."""

    def __init__(self, session) -> None:
        self.session = session
        self._output = [OUTPUT_NAME]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(self._output, {INPUT_NAME: images})[0]

    def describe(self) -> dict[str, Any]:
        providers = self.session.get_providers()
        return {"runtime": "onnxruntime", "providers": providers,
                "device": "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"}


@functools.cache
def onnx_schema():
    """ONNX's generated protobuf module (``ModelProto``, ``TensorProto``), without importing the ``onnx`` package.

    The package's import loads ml_dtypes, the slowest import of the ``onnx`` Bento's start (docs/deploy.md,
    "Profiles"); checking a model needs only the message schema. Protobuf keeps one
    class per message type, so the ``onnx`` package, if imported later, shares these classes.
    """
    package = importlib.util.find_spec("onnx")
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("the onnx package is not installed", name="onnx")
    path = Path(package.submodule_search_locations[0]) / "onnx_ml_pb2.py"
    spec = importlib.util.spec_from_file_location("fashion_onnx_ml_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def external_data_tensors(message) -> list[tuple[str, str]]:
    """``(tensor name, location)`` of every tensor anywhere in an ONNX message whose data lives in another file.

    Walks every nested message rather than naming the places tensors can sit (initializers,
    sparse initializers, ``Constant`` attributes, subgraphs of ``If``/``Loop``, functions,
    training info), so a place added to ONNX later is still covered.
    """
    from google.protobuf.message import Message

    if message.DESCRIPTOR.full_name == "onnx.TensorProto":
        if message.data_location != message.EXTERNAL:
            return []
        location = next((e.value for e in message.external_data if e.key == "location"), "")
        return [(message.name, location)]
    found = []
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for item in [value] if isinstance(value, Message) else value:
                found += external_data_tensors(item)
    return found


def refuse_external_data(path: Path, model_bytes: bytes) -> None:
    """Refuse a model that would make ONNX Runtime open any file besides itself.

    Our exports (``torch.onnx.export``, tf2onnx, ``quantize_dynamic``) write one self-contained
    file far below protobuf's 2 GB limit, and the manifest lists only that file; so any external
    data is foreign. Refusing it outright, rather than allowing files inside the folder, keeps
    the whole feature out of reach: whoever can rewrite the model can rewrite the manifest too.
    ONNX Runtime 1.31 itself refuses locations that resolve outside the model's folder, but that
    guard is recent and has needed follow-ups (microsoft/onnxruntime#26776, #27430 for models
    loaded from bytes, #28408 for sparse tensors), and it still reads unlisted files inside the folder.

    Raises:
        IntegrityError: naming the tensor and the location it points to.
    """
    external = external_data_tensors(onnx_schema().ModelProto.FromString(model_bytes))
    if external:
        listed = ", ".join(f"{name!r} -> {location!r}" for name, location in external[:5])
        raise IntegrityError(f"{path}: {len(external)} tensor(s) keep their data in external files ({listed}); "
                             "fashion-serve models never use external data; refusing the model")


def load(path: Path, device: str = "auto", threads: int = 0, manifest: dict | None = None,
         spin: bool = True) -> OnnxPredictor:
    """Load an ONNX model, refusing one that references external data files.

    Args:
        path: the ``.onnx`` file (already verified against its manifest).
        device: ``auto`` (CUDA when an NVIDIA GPU is present), ``cuda`` or ``cpu``.
        threads: intra-op threads; 0 lets ONNX Runtime use every core.
        manifest: unused; accepted so every backend loads alike.
        spin: let idle intra-op threads spin for the next call (ONNX Runtime's default). A pipeline that reads
            and writes in other threads between calls turns it off: spinning threads take the cores those need.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Ask for CUDA only where a GPU exists: onnxruntime-gpu logs CUDA errors otherwise.
    use_cuda = device == "cuda" or (device == "auto" and has_nvidia_gpu())
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    # Hand ONNX Runtime the very bytes that were checked, not the path: the file cannot change between the two.
    model_bytes = Path(path).read_bytes()
    refuse_external_data(path, model_bytes)
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    return OnnxPredictor(session)
