"""Export trained runs to ONNX, SavedModel and a PyTorch state dict; verify, describe, register."""
