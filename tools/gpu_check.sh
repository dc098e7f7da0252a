#!/usr/bin/env bash
# The GPU check of vclr_d2 (tools/gpu_check.py) on a bare GPU machine, in at most 8 minutes.
#
#   bash tools/gpu_check.sh [OUT_DIR]        # default output/gpu_check
#
# A machine whose Python lacks detectron2 (or fvcore, iopath, yacs, pycocotools) gets them from
# the wheels in $WHEELS (default .whl: detectron2 from `tools/build_detectron2_wheel.py --cache
# .whl`, the others from `pip download`), installed into a private folder.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-output/gpu_check}
WHEELS=${WHEELS:-.whl}
PY=${PYTHON:-python3}
if ! "$PY" -c 'import detectron2, fvcore, pycocotools' 2>/dev/null; then
    [[ -d "$WHEELS" ]] || { echo "detectron2 is missing and there is no wheel folder $WHEELS" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/vclr_site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/vclr_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 480 "$PY" tools/gpu_check.py --out "$OUT_DIR"
