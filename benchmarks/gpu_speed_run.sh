#!/usr/bin/env bash
# The issue-19 speed measurement on one H100/H200, prepared so that it runs in one go: CFG batching, the step
# cache's step costs, fp8 compute (rowwise / tensor), the attention kernels (with their error against cuDNN),
# their combination eager and compiled, at 480p (with text, VAE and the 10-step I2V estimates), then 720p.
#
#   bash benchmarks/gpu_speed_run.sh 480p OUT_DIR    # ~6 min on an H100/H200
#   bash benchmarks/gpu_speed_run.sh 720p OUT_DIR    # ~5 min (no compiled row: it would recompile)
#   python benchmarks/gpu_bench.py --merge OUT_DIR/speed-480p.json OUT_DIR/speed-720p.json --json RESULT.json
#
# Python packages the GPU image may lack (diffusers, and sageattention for the sageattn rows) are installed
# from ./.whl when that folder exists (see README "Speed and memory on a GPU" for the pip download line).
# flash-attn-4 needs nvidia-cutlass-dsl-libs-cu13 (92 MB), more than one device call can carry: its rows
# appear only where the package is installed.
set -uo pipefail
size=${1:?480p or 720p}
out=${2:?output folder}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
case $size in
    480p) parts=speed,attention,text,vae; extra=() ;;
    720p) parts=speed,attention; extra=(--no-speed-compile) ;;
    *) echo "size must be 480p or 720p" >&2; exit 2 ;;
esac
timeout 560 python3 benchmarks/gpu_bench.py --parts "$parts" --sizes "$size" ${extra[@]+"${extra[@]}"} \
    --json "$out/speed-$size.json" 2>&1 | tee "$out/speed-$size.log"
