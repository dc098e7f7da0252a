#!/usr/bin/env bash
# Runs of the ablation (tools/ablation.py) side by side on one GPU, on a bare GPU machine.
#
#   bash tools/gpu_ablation.sh OUT_DIR SECONDS ABLATION_ARGS...
#
# e.g. the 5600-iteration rows (a), (b), (d), three seeds, nine runs at once (docs/experiments.md):
#   bash tools/gpu_ablation.sh output/gpu_5600 0 --rows a b d --seeds 0 1 2 --jobs 9 --threads 1 \
#       --output output/gpu_5600/runs --report output/gpu_5600/ablation.md MODEL.DEVICE cuda \
#       SOLVER.MAX_ITER 5600 SOLVER.STEPS "(4480,)" TEST.EVAL_PERIOD 1400
#
# SECONDS > 0 stops the runs after that many seconds (a lent machine's time is short); what they
# wrote until then is kept. Either way OUT_DIR/runs.tgz gets every file of the --output folder but
# the weights (each run's metrics.json holds its training curve and every evaluation), with the
# ablation's log and, when the GPU has nvidia-smi, its utilisation every 10 s (dmon.txt).
# A Python without detectron2 gets it and its needs from the wheels in $WHEELS (tools/gpu_env.sh).
# With MPS=1 (default) and
# nvidia-cuda-mps-control present, the runs share the GPU through MPS, so that their small kernels
# overlap; if a CUDA client cannot start under it within 60 s, MPS is stopped and they time-share.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 3 ]] || { echo "usage: bash tools/gpu_ablation.sh OUT_DIR SECONDS ABLATION_ARGS..." >&2; exit 2; }
OUT_DIR=$1
LIMIT=$2
shift 2
RUNS=""
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do
    [[ ${args[i]} == --output ]] && RUNS=${args[i + 1]}
done
[[ -n $RUNS ]] || { echo "gpu_ablation.sh: name the runs' folder with --output" >&2; exit 2; }
mkdir -p "$OUT_DIR"
source tools/gpu_env.sh
export OMP_NUM_THREADS=1

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nvidia-smi dmon -s um -d 10 > "$OUT_DIR/dmon.txt" 2>&1 &
fi
if [[ ${MPS:-1} == 1 ]] && command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/vclr_mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/vclr_mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    # a daemon left on this pipe folder by an earlier call is used as it is
    if ! echo get_server_list | timeout 10 nvidia-cuda-mps-control >/dev/null 2>&1; then
        nvidia-cuda-mps-control -d && trap 'echo quit | timeout 10 nvidia-cuda-mps-control' EXIT
    fi
    if timeout 60 "$PY" -c 'import torch; assert torch.ones(2, device="cuda").sum().item() == 2'; then
        echo "gpu_ablation.sh: the runs share the GPU through MPS"
    else
        echo quit | timeout 10 nvidia-cuda-mps-control
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        echo "gpu_ablation.sh: MPS did not start; the runs time-share the GPU"
    fi
fi

start=$SECONDS
# its own session: the ablation's workers are stopped with it at the deadline
setsid "$PY" tools/ablation.py "$@" > "$OUT_DIR/ablation.log" 2>&1 &
pid=$!
if [[ $LIMIT -gt 0 ]]; then
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - start < LIMIT)); do sleep 5; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "gpu_ablation.sh: stopped after ${LIMIT} s" | tee -a "$OUT_DIR/ablation.log"
        kill -- "-$pid" 2>/dev/null
    fi
fi
wait "$pid"
rc=$?
echo "gpu_ablation.sh: ablation exit status $rc after $((SECONDS - start)) s"
grep -E "^\[ablation|Traceback|Error" "$OUT_DIR/ablation.log" | tail -40
tar czf "$OUT_DIR/runs.tgz" --exclude='*.pth' "$RUNS" "$OUT_DIR/ablation.log" \
    $([[ -f $OUT_DIR/dmon.txt ]] && echo "$OUT_DIR/dmon.txt") 2>/dev/null
ls -la "$OUT_DIR"
exit "$rc"
