#!/usr/bin/env bash
# Set up (or check) the project-local environment: .venv with pinned torch/torchvision, a
# detectron2 (built as a pure-Python wheel when none works), and vclr_d2 in editable mode.
#
# Unattended on a fresh machine; a fast no-op when the environment is already complete (a stamp
# file records the hash of every input of the set-up, and the imports are checked).
# Environment: VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
PY="$VENV/bin/python"
STAMP="$VENV/.vclr_d2-setup"
KEY=$(cat constraints.txt setup.py tools/build_detectron2_wheel.py tools/setup_env.sh | sha256sum | cut -d' ' -f1)
CHECK='import detectron2.engine, detectron2.evaluation, vclr_d2'

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" ]] && "$PY" -c "$CHECK" 2>/dev/null; then
    exit 0
fi

start=$(date +%s)
echo "[setup] creating/updating $VENV" >&2
[[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$PY" -m pip install --disable-pip-version-check -c constraints.txt)
"${PIP[@]}" -q --upgrade pip setuptools wheel
# torch/torchvision first and alone: their versions are pinned in constraints.txt.
"${PIP[@]}" torch torchvision

# detectron2: left alone when a working one (e.g. upstream's, with CUDA) is installed.
"$PY" tools/build_detectron2_wheel.py --cache .cache/wheels --install -c constraints.txt

"${PIP[@]}" -e '.[dev]'
"$PY" -W ignore -c "$CHECK"
echo "$KEY" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start )) s" >&2
