#!/usr/bin/env bash
# Everything a lent GPU should check for saeops.kernels, in one short run (see bench/README.md):
# the kernel test suite on CUDA (compiled Triton, not the interpreter), then bench_gpu.py on
# the issue's shape in fp32 and bf16 and on a large bf16 dictionary. Needs only torch and
# triton (the device image has both); logs go to $OUT (or ./gpu-check-out).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/kernels:$PWD" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{ nvidia-smi -L; $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/env.log"
SAEOPS_TEST_DEVICE=cuda timeout 300 $PY -m pytest -q tests/kernels 2>&1 | tail -n 40 | tee "$OUT/tests.log"
cd bench/kernels
for args in "--dtype fp32 --profile" "--dtype bf16" "--dtype bf16 --d-model 4096 --expansion 32 --k 64 --iters 10"; do
  echo "== bench_gpu.py $args" | tee -a "$OUT/bench.log"
  timeout 240 $PY bench_gpu.py $args 2>&1 | tee -a "$OUT/bench.log"
done
