#!/usr/bin/env bash
# The GPU check of vclr_d2 (tools/gpu_check.py) on a bare GPU machine, in at most 8 minutes.
#
#   bash tools/gpu_check.sh [OUT_DIR]        # default output/gpu_check
#
# A machine whose Python lacks detectron2 gets it and its needs from the wheels in $WHEELS
# (tools/gpu_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-output/gpu_check}
source tools/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 480 "$PY" tools/gpu_check.py --out "$OUT_DIR"
