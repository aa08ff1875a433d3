#!/usr/bin/env bash
# The GPU benchmark (docs/gpu.md): python -m benchmark.gpu, after putting the carried wheels in place.
#
# On a GPU server (the last step of docs/gpu.md):  bash benchmark/gpu.sh --out DIR
#   stashes every .gpu-carry/call* folder present, joins the pieces under /tmp/fashion-gpu, installs
#   the wheels there with pip --no-deps --target, then benchmarks with the carried models, test
#   images and wrk. Stages already in /tmp/fashion-gpu/state-cuda.json (an earlier call) are kept.
# Here, a CPU dry run:  PYTHON=.venv/bin/python bash benchmark/gpu.sh --device cpu --out /tmp/gpu-dry-run
# Any other option goes to python -m benchmark.gpu (--stages, --fresh, ...).
set -uo pipefail
python="${PYTHON:-python3}"
dir=/tmp/fashion-gpu
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=cuda prev=
for arg in "$@"; do [ "$prev" = --device ] && device="$arg"; prev="$arg"; done
extra=()
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv,noheader || true
  mkdir -p "$dir"
  for call in .gpu-carry/call*; do
    [ -f "$call/plan.json" ] && "$python" -m benchmark.gpu.carry stash "$call"
  done
  if [ ! -f "$dir/site/.installed" ] && [ -f "$dir/plan.json" ]; then
    if "$python" -m benchmark.gpu.carry assemble --site "$dir/site" >"$dir/carry.log" 2>&1; then
      touch "$dir/site/.installed"
    fi
    tail -5 "$dir/carry.log"
  fi
  export PYTHONPATH="$dir/site:$PYTHONPATH"
  inputs=$(ls -d .gpu-carry/call*/inputs 2>/dev/null | tail -1)
  if [ -n "$inputs" ]; then
    export PATH="$(pwd)/$inputs/bin:$dir/site/bin:$PATH"
    extra+=(--models "$inputs/models" --data "$inputs/data")
  fi
  # onnxruntime-gpu dlopens libcublas.so.13, libcudnn.so.9 ...: the image has them in its nvidia-* packages.
  cuda_libs=$("$python" -c "import glob, os, nvidia; print(':'.join(sorted({os.path.dirname(p) for d in nvidia.__path__
    for p in glob.glob(d + '/**/lib/*.so*', recursive=True)})))" 2>/dev/null)
  export LD_LIBRARY_PATH="${inputs:+$(pwd)/$inputs/bin:}$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  [ -f "$dir/carry.log" ] && extra+=(--carry-log "$dir/carry.log")
fi
timeout 570 "$python" -m benchmark.gpu "${extra[@]}" "$@"
