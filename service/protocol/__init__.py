"""The Open Inference Protocol over gRPC: open_inference.proto and its committed stubs (make protos)."""
