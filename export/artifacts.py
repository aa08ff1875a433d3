"""Write each artifact format from the folded dense layers of a trained model.

Every artifact takes the contract's ``images: float32[N, 28, 28]`` and returns
``logits: float32[N, 10]``, with a dynamic batch dimension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fashion.contract import IMAGE_SIZE, INPUT_NAME, OUTPUT_NAME

DenseLayers = list[tuple[np.ndarray, np.ndarray]]


def layer_sizes(layers: DenseLayers) -> list[int]:
    """``[784, hidden..., 10]`` from the weight shapes."""
    return [layers[0][0].shape[0], *(weight.shape[1] for weight, _ in layers)]


def save_torch_state(layers: DenseLayers, path: Path) -> None:
    """The inference MLP's state dict: plain tensors, loadable with ``weights_only=True``."""
    import torch

    from fashion.backends.torch_runtime import mlp_from_dense_layers

    torch.save(mlp_from_dense_layers(layers).state_dict(), path)


def export_torch_onnx(layers: DenseLayers, path: Path, opset: int) -> None:
    """ONNX through PyTorch's exporter (``torch.export`` based), batch dimension dynamic."""
    import torch

    from fashion.backends.torch_runtime import mlp_from_dense_layers

    model = mlp_from_dense_layers(layers)
    example = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE)
    torch.onnx.export(
        model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, dynamo=True,
        external_data=False, verbose=False,
    )


def _serving_module(layers: DenseLayers):
    """A ``tf.Module`` computing the MLP, with the contract's signature."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.float32, name=INPUT_NAME)

    class FashionMLP(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="fashion_mlp")
            self.dense = [(tf.Variable(w, trainable=False), tf.Variable(b, trainable=False)) for w, b in layers]

        @tf.function(input_signature=[spec])
        def serve(self, images):
            x = tf.reshape(images, [-1, IMAGE_SIZE * IMAGE_SIZE])
            for i, (weight, bias) in enumerate(self.dense):
                x = tf.matmul(x, weight) + bias
                if i < len(self.dense) - 1:
                    x = tf.nn.relu(x)
            return {OUTPUT_NAME: x}

    return FashionMLP(), spec


def export_savedmodel(layers: DenseLayers, path: Path) -> None:
    """A SavedModel whose ``serving_default`` signature is ``images -> {logits}``."""
    import tensorflow as tf

    module, _ = _serving_module(layers)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def export_tf_onnx(layers: DenseLayers, path: Path, opset: int) -> None:
    """ONNX through tf2onnx's ``from_function`` (``from_keras`` fails on Keras 3)."""
    import tensorflow as tf
    import tf2onnx

    module, spec = _serving_module(layers)
    # from_function wants a free function; a bound method's `self` trips its signature check.
    function = tf.function(lambda images: module.serve(images))
    tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset, output_path=str(path))


def check_onnx(path: Path) -> None:
    """``onnx.checker`` with the full check (shape inference included)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights (fast on VNNI CPUs)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser re-runs shape inference, which trips over the value_info that
    # PyTorch's exporter records for transposed weights; it is only a hint, so drop it.
    model = onnx.load(str(source))
    model.graph.ClearField("value_info")
    quantize_dynamic(model, str(target), weight_type=QuantType.QInt8)
