#!/usr/bin/env bash
# GPU figures in one device-tool call (see README "Benchmarks"): installs the pure-Python wheels carried
# in .whl/ (the device image has torch but not gymnasium/SB3/minigrid), then runs the throughput
# benchmark at the paper's sizes and a short MAMBA training run on the GPU.
#   usage (device tool, carry [".whl"]): bash benchmarks/device_run.sh
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# on the GPU first (pytest wheels in .whl/): the fused scan against eager, and an update that never waits
# for the device (torch.cuda.set_sync_debug_mode("error"))
if python3 -c "import pytest" 2>/dev/null; then
  python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_device_path.py -k "cuda or gpu" 2>&1 \
    | tee "$OUT/scan_check_gpu.txt"
else
  echo "pytest not installed: add its wheels (pytest, pluggy, iniconfig, packaging) to .whl/ for the scan check"
fi
python3 -m benchmarks.run --device cuda --updates 20 --out-dir "$OUT" 2>&1 | tee "$OUT/benchmark_gpu.txt"
python3 examples/train_mamba.py --device cuda --full-size --env MetaRooms-1-v0 --sub-episode-length 0 \
  --n-envs 8 --steps "${TRAIN_STEPS:-32000}" --evals 4 --save "$OUT/mamba_rooms1_gpu.zip" 2>&1 | tee "$OUT/train_gpu.txt"
