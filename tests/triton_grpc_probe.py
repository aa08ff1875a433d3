"""tritonclient's gRPC client against a fashion-serve gRPC port: every call a v2 client makes, as JSON on stdout.

Run in a process of its own (``python -m tests.triton_grpc_probe --url HOST:PORT --model NAME --images FILE.npy``):
tritonclient's generated messages and the server's (service/protocol) both define the specification's
``inference.*`` protobuf symbols, and one Python process holds only one definition of each (protobuf's default
descriptor pool refuses a duplicate), so a test that serves in process asks from here.

It prints the server's and the model's health, metadata and configuration as tritonclient decodes them, and the
outputs of one inference with the images sent as raw bytes (``set_data_from_numpy``) and one with the same images as
typed ``contents.uint_contents``. Used by tests/integration/test_grpc_inprocess.py and tests/bento_check.py.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

OUTPUTS = ("logits", "probabilities", "ood_score", "in_distribution")


def infer(client: object, model: str, images: np.ndarray, typed: bool) -> dict[str, list]:
    """One inference of ``images``, raw or typed; every output as a nested list."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
    if typed:
        # tritonclient sends raw bytes only; its request message is the protocol's, so fill the typed field there.
        tensor._get_tensor().contents.uint_contents.extend(images.ravel().tolist())
    else:
        tensor.set_data_from_numpy(images)
    outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
    result = client.infer(model, [tensor], outputs=outputs, request_id="probe")
    answer = {name: result.as_numpy(name).tolist() for name in OUTPUTS}
    answer["id"] = result.get_response().id
    return answer


def classify(client: object, model: str, images: np.ndarray) -> list:
    """Triton's classification extension: the top 3 classes of each image as strings."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=3)])
    return [[s.decode() for s in row] for row in result.as_numpy("probabilities")]


def probe(url: str, model: str, images: np.ndarray) -> dict:
    """What tritonclient's gRPC client sees of ``model`` at ``url``."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    return {
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(model, as_json=True),
        "model_config": client.get_model_config(model, as_json=True),
        "binary": infer(client, model, images, typed=False),
        "typed": infer(client, model, images, typed=True),
        "classification": classify(client, model, images),
        "statistics": client.get_inference_statistics(model, as_json=True),  # after the inferences above
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the gRPC port, HOST:PORT")
    parser.add_argument("--model", default="onnx-torch", help="the v2 model name (default onnx-torch)")
    parser.add_argument("--images", required=True, help="a .npy file of uint8[N, 28, 28] images")
    args = parser.parse_args(argv)
    json.dump(probe(args.url, args.model, np.load(args.images)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
