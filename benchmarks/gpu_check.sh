#!/usr/bin/env bash
# The GPU check (Performance II issue): on one CUDA GPU, in at most ~8 minutes,
#   1. the CUDA correctness tests: compiled (Triton) kernels against the eager ones against the naive reference,
#      forward and gradients, every estimator (tests/test_cuda.py);
#   2. the CUDA benchmark: plain against NRPM, K = 1 and 3, narrow and full ResNet-18, batch 128
#      (benchmarks/bench_cuda.py), writing results/bench_cuda.json and results/bench_cuda.md.
# Without CUDA both steps skip cleanly (exit 0), so the script can be checked on a CPU machine.
# Usage: benchmarks/gpu_check.sh            (from a checkout with .venv, or set PYTHON)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to torch; the CUDA tests and benchmark are skipped"
  "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py   # runs, and reports every test as skipped
  "$PYTHON" benchmarks/bench_cuda.py --out results/bench_cuda.json
  exit 0
fi
"$PYTHON" -c "import torch; print('gpu_check on', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
timeout 300 "$PYTHON" benchmarks/bench_cuda.py --out results/bench_cuda.json --repeats 10
