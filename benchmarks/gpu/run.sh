#!/usr/bin/env bash
# benchmarks/gpu/run.sh OUT_DIR: build, GPU tests and benchmarks in one go, on a
# machine with an NVIDIA GPU (compute capability 8.0+) and no network.
#
#   1. installs the wheels carried in .whl/ (benchmarks/gpu/fetch_wheels.sh
#      stages them: diffusers, scipy-openblas32) into $D3SR_SITE (/tmp/d3sr-site);
#   2. pip-installs this checkout there with the CUDA backend forced on
#      (D3SR_CUDA=1), compiled for this GPU's compute capability; if that fails,
#      builds the CPU core alone and uses .prebuilt/libd3sr_cuda.so if carried;
#   3. runs tests/test_cuda.py: every kernel and model on the GPU;
#   4. runs benchmarks/gpu/bench.py: d3sr bf16/fp16 against diffusers fp16 eager.
#
# Writes into OUT_DIR: machine.txt, build.log, tests.log, bench.log, plans.log,
# results.json and results.md. Ends within D3SR_RUN_SECONDS (default 470 s):
# the tests get at most a third of what is left after the build, and bench.py
# starts no measurement it cannot finish. Exit status: that of the tests, or 1
# if the build failed. PYTHON picks the interpreter (default python3, the one
# with PyTorch on this workplace's GPU machines); D3SR_BENCH_ARGS adds arguments
# to bench.py (e.g. "--tasks generator --runs 50").
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu/run.sh OUT_DIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.." || exit 1
PY=${PYTHON:-python3}
SITE=${D3SR_SITE:-/tmp/d3sr-site}
START=$(date +%s)
DEADLINE=$((START + ${D3SR_RUN_SECONDS:-470}))
export PYTHONUNBUFFERED=1
say() { echo "[run.sh +$(($(date +%s) - START))s] $*"; }
left() { echo $((DEADLINE - $(date +%s))); }

{
    date -u; uname -a; nvidia-smi || true
    "$PY" -c 'import sys; print(sys.version)'
    command -v nvcc && nvcc --version
} > "$OUT/machine.txt" 2>&1

# 1. Wheels carried in .whl/.
rm -rf "$SITE" && mkdir -p "$SITE"
if compgen -G ".whl/*.whl" > /dev/null; then
    say "installing $(ls .whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
        >> "$OUT/build.log" 2>&1 || say "installing .whl/ failed (build.log)"
else
    say "no .whl/: diffusers and scipy-openblas32 must already be installed"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# cuBLAS and cuDNN where PyTorch's pip wheels keep them, for a carried prebuilt library
# (a library built here records where it found them).
NVLIBS=$("$PY" - <<'EOF'
import importlib.util, os
dirs = []
for name in ("nvidia.cu13", "nvidia.cudnn", "nvidia.cublas"):
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isdir(os.path.join(loc, "lib")):
            dirs.append(os.path.join(loc, "lib"))
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH="${NVLIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# 2. Build and install d3sr with its CUDA backend.
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1 | tr -d ' .')
export D3SR_CUDA_ARCHS=${D3SR_CUDA_ARCHS:-${ARCH:-90}}
INSTALL=("$PY" -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir --upgrade --target "$SITE" .)
say "building d3sr with CUDA for sm_$D3SR_CUDA_ARCHS into $SITE"
if ! D3SR_CUDA=1 "${INSTALL[@]}" >> "$OUT/build.log" 2>&1; then
    say "the CUDA build failed; the end of build.log:"
    tail -25 "$OUT/build.log"
    D3SR_CUDA=0 "${INSTALL[@]}" >> "$OUT/build.log" 2>&1 || { say "the CPU build failed too"; exit 1; }
    if [ -f .prebuilt/libd3sr_cuda.so ]; then
        cp .prebuilt/libd3sr_cuda.so "$SITE/d3sr/" && say "using the carried .prebuilt/libd3sr_cuda.so"
    fi
fi
"$PY" -P -c 'import d3sr; print("d3sr", d3sr.__file__, "cuda_available:", d3sr.cuda_available(), d3sr.cuda_status())' \
    2>&1 | tee -a "$OUT/machine.txt"

# 3. The GPU tests.
TEST_SECONDS=$(($(left) / 3))
say "tests/test_cuda.py (at most ${TEST_SECONDS} s)"
timeout "$TEST_SECONDS" "$PY" -P -m pytest -v -rs -p no:cacheprovider tests/test_cuda.py > "$OUT/tests.log" 2>&1
TESTS=$?
[ "$TESTS" = 124 ] && echo "(stopped after ${TEST_SECONDS} s)" >> "$OUT/tests.log"
grep -E " (FAILED|ERROR)" "$OUT/tests.log" | head -20
tail -1 "$OUT/tests.log"

# 4. The benchmarks.
say "benchmarks (until $(($(left))) s from now)"
# shellcheck disable=SC2086  # D3SR_BENCH_ARGS is split into arguments on purpose
"$PY" -P benchmarks/gpu/bench.py --out "$OUT" --deadline "$DEADLINE" ${D3SR_BENCH_ARGS:-} 2>&1 | tee -a "$OUT/bench.log"
rm -rf /dev/shm/d3sr-bench /tmp/d3sr-bench
say "done; results in $OUT"
exit "$TESTS"
