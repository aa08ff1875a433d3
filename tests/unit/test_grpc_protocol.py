"""The gRPC protocol definition (service/protocol): its committed stubs are what `make protos` generates, its names
are the specification's, and its port setting is strict."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import ConfigError, ServiceConfig

REPO = Path(__file__).resolve().parents[2]
PROTO = "service/protocol/open_inference.proto"
STUBS = ("open_inference_pb2.py", "open_inference_pb2_grpc.py")


def protoc_command(out: Path) -> list[str]:
    """`make protos`' command (the Makefile's ``protos`` recipe), writing into ``out`` instead of the checkout."""
    recipe = re.search(r"^protos:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    args = recipe.replace("$(PY)", sys.executable).replace("=.", f"={out}").split()
    assert args[1:3] == ["-m", "grpc_tools.protoc"] and args[-1] == PROTO, recipe
    return args


def test_the_committed_stubs_are_what_make_protos_generates(tmp_path):
    subprocess.run(protoc_command(tmp_path), cwd=REPO, check=True, capture_output=True)
    for stub in STUBS:
        generated = (tmp_path / "service" / "protocol" / stub).read_text()
        assert generated == (REPO / "service" / "protocol" / stub).read_text(), f"{stub} is stale: run make protos"


def test_the_service_is_the_specifications_inference_service():
    from service.protocol import open_inference_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                                 "ModelMetadata", "ModelInfer", "ModelConfig", "ModelStatistics"}
    request = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
    assert (request["inputs"].number, request["raw_input_contents"].number) == (5, 7)
    assert pb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number == 6
    assert pb.ModelConfig.DESCRIPTOR.fields_by_name["dynamic_batching"].number == 11
    assert pb.DataType.Value("TYPE_UINT8") == 2 and pb.DataType.Value("TYPE_FP32") == 11
    stats = pb.ModelStatistics.DESCRIPTOR.fields_by_name
    assert (stats["inference_count"].number, stats["inference_stats"].number) == (4, 6)
    assert pb.InferStatistics.DESCRIPTOR.fields_by_name["compute_infer"].number == 5


@pytest.mark.parametrize(("value", "port"), [("", 0), ("0", 0), ("3001", 3001)])
def test_the_grpc_port_is_off_unless_set(value, port):
    assert ServiceConfig.from_env({"FASHION_GRPC_PORT": value}).grpc_port == port


@pytest.mark.parametrize("value", ["70000", "-1", "grpc"])
def test_a_bad_grpc_port_is_an_error(value):
    with pytest.raises(ConfigError):
        ServiceConfig.from_env({"FASHION_GRPC_PORT": value})
