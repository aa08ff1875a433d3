#!/usr/bin/env bash
# The in-process benchmark on a GPU machine whose Python has torch and onnxruntime but
# no TensorFlow or BentoML (nothing to install; finishes in a few minutes).
# Usage, from the repository root: benchmark/gpu.sh ARTIFACTS_DIR [OUT_DIR]
#   ARTIFACTS_DIR: exported models (artifacts/ after `make export`: <model>/<version>/manifest.json ...)
# SavedModel is reported as skipped (no TensorFlow); the data loader needs the four IDX files
# (FASHION_MNIST_DIR, data/fashion-mnist/ or /usr/share/datasets/fashion-mnist/).
set -euo pipefail
artifacts="${1:?usage: benchmark/gpu.sh ARTIFACTS_DIR [OUT_DIR]}"
out="${2:-results}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" timeout 300 python3 -m benchmark --skip-http --device cuda \
  --models "$artifacts" --out "$out"
