#!/usr/bin/env bash
# The GPU check (make gpu-check): the CUDA tests, every notebook at the smoke budget and a
# timed quick run of notebook 02, on this machine's GPU, with a short report. Without a
# GPU it says so and exercises what it can on the CPU. See scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" scripts/gpu_check.py "$@"
