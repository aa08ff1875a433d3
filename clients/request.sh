#!/usr/bin/env bash
# Classify a real Fashion-MNIST test image with curl against a running service.
# Usage: clients/request.sh [URL] [IMAGE] [BACKEND]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
url="${1:-http://localhost:3000}"
image="${2:-$here/fashion/samples/9-ankle-boot-test0.png}"
backend="${3:-onnx-torch}"
curl --fail-with-body -sS -F "images=@${image}" "${url}/classify?backend=${backend}"
echo
