"""A SIGTERM during a gRPC load loses no call the server accepted (a real ``bentoml serve``: signals need a process).

Only gRPC calls reach the server here (readiness is awaited over gRPC too), so the worker's closing line
(service.config.STOPPED_LINE: API requests let in, answered in full) counts exactly the gRPC inferences.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np

from benchmark.harness import free_port, start
from service.protocol import open_inference_pb2 as pb
from service.protocol import open_inference_pb2_grpc as pb_grpc

CLIENTS = 8
CALLS_BEFORE_SIGTERM = 200
HANG_GUARD_S = 180


def wait_grpc_ready(stub: pb_grpc.GRPCInferenceServiceStub, server) -> None:
    """Until ServerReady says ready (the models are loaded); fails if the server exits first."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log.read_text()[-4000:]
        try:
            if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                return
        except grpc.RpcError:
            pass  # not listening yet
        time.sleep(0.2)
    raise TimeoutError(f"gRPC not ready within {HANG_GUARD_S} s; see {server.log}")


def test_sigterm_during_a_grpc_load_loses_no_accepted_call(exported, bentoml_home, tmp_path):
    from export.store import register_model

    for model_dir in exported.values():
        register_model(model_dir)
    grpc_port = free_port()
    server = start(tmp_path, env={"FASHION_GRPC_PORT": str(grpc_port), "FASHION_GRPC_HOST": "127.0.0.1",
                                  "FASHION_BACKENDS": "onnx-torch"}, models=bentoml_home / "models")
    target = f"127.0.0.1:{grpc_port}"
    request = pb.ModelInferRequest(model_name="onnx-torch", raw_input_contents=[np.zeros((1, 28, 28), np.uint8)
                                                                              .tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 28, 28])
    answered, refused = [], []
    enough = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while True:
                try:
                    stub.ModelInfer(request, timeout=60)
                except grpc.RpcError as exc:
                    with lock:
                        refused.append(exc.code())
                    return
                with lock:
                    answered.append(1)
                    if len(answered) >= CALLS_BEFORE_SIGTERM:
                        enough.set()

    try:
        with grpc.insecure_channel(target) as channel:
            wait_grpc_ready(pb_grpc.GRPCInferenceServiceStub(channel), server)
        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        assert enough.wait(HANG_GUARD_S), f"only {len(answered)} calls answered; see {server.log}"
    finally:
        code = server.stop(timeout=HANG_GUARD_S)
    for thread in threads:
        thread.join(HANG_GUARD_S)
    assert code == 0, server.log.read_text()[-4000:]
    counts = server.stopped_counts()
    assert counts is not None, server.log.read_text()[-4000:]
    # Every call let in was answered in full, and every answer reached its client. Each client's last call was
    # refused before it was let in: UNAVAILABLE when it reached the draining server or found it gone, CANCELLED
    # when it was still in transit as gRPC itself stopped (docs/serving.md, "gRPC").
    assert counts["let_in"] == counts["answered"] == len(answered) and counts["in_progress"] == 0, counts
    assert len(refused) == CLIENTS and set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, \
        refused
