#!/usr/bin/env bash
# The one GPU check (BENCHMARKS.md, GPU section): the `cuda` tests, training tokens/s and MFU of
# gpt2-small-meta vs gpt2-small at 8 x 1024 (bf16, compiled), and generation vs transformers.
# At most about 8 minutes on one CUDA GPU, no network; prints one markdown table; exit 1 on any failure.
#   bash benchmarks/gpu_check.sh            # from anywhere, with a Python whose torch has CUDA
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
