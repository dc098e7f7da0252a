#!/usr/bin/env bash
# Several invocations of the ablation (tools/ablation.py), each with its own config overrides,
# side by side on one GPU, on a bare GPU machine: tools/gpu_ablation.sh once per line of a file.
#
#   bash tools/gpu_variants.sh OUT_DIR SECONDS VARIANTS_FILE
#
# Each non-empty line of VARIANTS_FILE that does not start with # is "NAME ABLATION_ARGS...",
# the arguments as on a shell command line (quotes are honoured), e.g.
#   b  --rows b --seeds 0 1 2 --jobs 3 --threads 1 --output output/gpu/b MODEL.DEVICE cuda
#   dn --rows d --seeds 0 1 2 --jobs 3 --threads 1 --output output/gpu/dn MODEL.DEVICE cuda \
#      MODEL.VCLR.PATCH_MIX_PROB 0.0       (one line in the file)
# Every variant's files go to OUT_DIR/NAME (its runs.tgz, ablation.log, dmon.txt; see
# tools/gpu_ablation.sh) and its output to OUT_DIR/NAME.log; at the end all of them are packed
# into one file, OUT_DIR/variants.tgz (the device tool brings back only a few files of $OUT: copy
# that one there). SECONDS > 0 stops every variant after that many seconds. The packages are
# installed and the MPS daemon started once, before the variants start, so that they share both.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 3 ]] || { echo "usage: bash tools/gpu_variants.sh OUT_DIR SECONDS VARIANTS_FILE" >&2; exit 2; }
OUT_DIR=$1
LIMIT=$2
VARIANTS=$3
[[ -f $VARIANTS ]] || { echo "gpu_variants.sh: no variants file $VARIANTS" >&2; exit 2; }
[[ $LIMIT =~ ^[0-9]+$ ]] || { echo "gpu_variants.sh: SECONDS must be a whole number of seconds, got '$LIMIT'" >&2; exit 2; }
# every line is read and checked before the first variant starts
lines=()
names=()
n=0
while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    [[ -z ${line//[[:space:]]/} || $line =~ ^[[:space:]]*# ]] && continue
    if ! eval "args=($line)" 2>/dev/null || [[ ${#args[@]} -lt 2 ]]; then
        echo "gpu_variants.sh: $VARIANTS line $n is not 'NAME ABLATION_ARGS...': $line" >&2; exit 2
    fi
    name=${args[0]}
    [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "gpu_variants.sh: bad variant name '$name' on line $n of $VARIANTS" >&2; exit 2; }
    for other in "${names[@]}"; do
        [[ $other == "$name" ]] && { echo "gpu_variants.sh: variant '$name' twice in $VARIANTS" >&2; exit 2; }
    done
    names+=("$name")
    lines+=("$line")
done < "$VARIANTS"
[[ ${#names[@]} -gt 0 ]] || { echo "gpu_variants.sh: no variant in $VARIANTS" >&2; exit 2; }

mkdir -p "$OUT_DIR"
source tools/gpu_env.sh
export PYTHON=$PY

if command -v nvidia-cuda-mps-control >/dev/null && [[ ${MPS:-1} == 1 ]]; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/vclr_mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/vclr_mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if ! echo get_server_list | timeout 10 nvidia-cuda-mps-control >/dev/null 2>&1; then
        nvidia-cuda-mps-control -d && trap 'echo quit | timeout 10 nvidia-cuda-mps-control' EXIT
    fi
fi

pids=()
for i in "${!names[@]}"; do
    eval "args=(${lines[i]})"
    bash tools/gpu_ablation.sh "$OUT_DIR/${names[i]}" "$LIMIT" "${args[@]:1}" > "$OUT_DIR/${names[i]}.log" 2>&1 &
    pids+=($!)
    echo "gpu_variants.sh: started ${names[i]}"
done

rc=0
for i in "${!pids[@]}"; do
    wait "${pids[i]}"
    r=$?
    echo "gpu_variants.sh: ${names[i]} exit status $r"
    tail -n 15 "$OUT_DIR/${names[i]}.log"
    [[ $r -ne 0 ]] && rc=$r
done
tar czf "$OUT_DIR/variants.tgz" -C "$OUT_DIR" --exclude=variants.tgz "${names[@]}" \
    $(printf '%s.log ' "${names[@]}")
echo "gpu_variants.sh: every variant's files in $OUT_DIR/variants.tgz"
exit "$rc"
