#!/usr/bin/env bash
# GPU checks on a machine that has torch + CUDA but maybe no Ray: the GPU tests and the Ray-free
# benchmarks (ROI extraction, the plain training loop) at 1x and 4x. Needs a finished pipeline's
# rois/ and word_vectors/ under WORK (default runs/default). Results go to OUT (default runs/gpu).
#   bash scripts/gpu_check.sh [WORK] [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/default}
OUT=${2:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
$PY -m pytest -q -m gpu -rs tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
$PY -m rayjobs.bench all --work-dir "$WORK" --no-ray --device cuda --sizes 1,4 --out "$OUT" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
