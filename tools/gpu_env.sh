# Sourced by tools/gpu_check.sh and tools/gpu_ablation.sh, from the repository root: makes
# detectron2 and the packages a bare GPU machine lacks importable for $PY.
#
# A Python without detectron2 (or fvcore, iopath, yacs, pycocotools, omegaconf) gets them from the
# wheels in $WHEELS (default .whl: detectron2 from `tools/build_detectron2_wheel.py --cache .whl`,
# the others from `pip download`), installed into /tmp/vclr_site. Exports PYTHONPATH (that folder
# and the repository), PYTHONUNBUFFERED; exits 2 with a message when that cannot work.
WHEELS=${WHEELS:-.whl}
PY=${PYTHON:-python3}
# checked from /tmp, so that nothing in the repository's root stands in for a package
if ! (cd /tmp && "$PY" -c 'import detectron2.config, fvcore, pycocotools.mask, omegaconf') 2>/dev/null; then
    [[ -d "$WHEELS" ]] || { echo "detectron2 is missing and there is no wheel folder $WHEELS" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/vclr_site "$WHEELS"/*.whl || exit 2
    export PYTHONPATH=/tmp/vclr_site${PYTHONPATH:+:$PYTHONPATH}
fi
(cd /tmp && "$PY" -c 'import detectron2.config, torch; print("detectron2", detectron2.__file__, "torch", torch.__version__)') || {
    echo "detectron2 does not import, also after installing the wheels in $WHEELS (is its wheel there?)" >&2; exit 2; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
