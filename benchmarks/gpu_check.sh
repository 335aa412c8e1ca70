#!/usr/bin/env bash
# TPT on one GPU in under 8 minutes: a correctness pass (GPU fp32 vs CPU fp32 predictions on the same views)
# and the throughput of ViT-B/16 at 1000 classes with 1, 8 and 32 images tuned at once, with the projected
# time for ImageNet's 50,000 images. Options go to benchmarks/gpu_check.py (--prec bf16, --gpu-views, ...).
#
#   bash benchmarks/gpu_check.sh                       # results: benchmarks/results/gpu_check_cuda.json
#   bash benchmarks/gpu_check.sh --device cpu --ci     # CI-sized, on the CPU (tiny CLIP, seconds)
#
# PYTHON picks the interpreter (default: the repository's .venv if there is one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py "$@"
