#!/usr/bin/env bash
# benchmarks/gpu/fetch_wheels.sh [--prebuilt]
#
# Stages, on a machine with PyPI access, what benchmarks/gpu/run.sh needs on a
# GPU machine without network (this workplace's device machines: x86-64,
# CPython 3.12, PyTorch 2.11 with CUDA 13.0, nvcc, numpy, safetensors, pillow,
# huggingface-hub and pytest preinstalled; per the device machine's package list):
#
#   .whl/       diffusers 0.42.1 (the PyTorch reference; pure Python, 6 MB) and
#               scipy-openblas32 (d3sr's BLAS, which its build needs; 8 MB), for
#               CPython 3.12 on manylinux x86-64. diffusers' other needs are
#               there already (importlib_metadata is not used on 3.12); torch is
#               never carried (its CUDA wheels alone are far over the 64 MiB a
#               device call may carry).
#   .prebuilt/  with --prebuilt: libd3sr_cuda.so built here for sm_80 and sm_90
#               (run it in d3sr's development environment, which has numpy and
#               scipy-openblas32); run.sh uses it only if the CUDA build fails
#               on the GPU machine. 6 MB.
#
# Both folders are git-ignored: name them in the device tool's carry list
# (carry: [".whl", ".prebuilt"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 scipy-openblas32==0.3.34.481.3
if [ "${1:-}" = "--prebuilt" ]; then
    D3SR_CUDA=1 D3SR_CUDA_ARCHS="80;90" "$PY" setup.py build_ext --inplace
    rm -rf .prebuilt && mkdir -p .prebuilt && cp d3sr/libd3sr_cuda.so .prebuilt/
fi
du -sh .whl .prebuilt 2> /dev/null || true
