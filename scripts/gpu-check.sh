#!/usr/bin/env bash
# Prove the GPU half on this NVIDIA machine, from a clone of the repository:
#   1. make install (.venv with the package, the test tools and the TensorRT lean runtime);
#   2. pycuda: a wheel when one fits, else built from its source distribution with every core
#      compiling at once (scripts/parallel_compile); needs the CUDA toolkit (nvcc, cuda.h);
#   3. pytest -m gpu: the CUDA tier (pycuda + GPU) and the TensorRT tier (skipped with its reason
#      when TensorRT is not installed; WITH_TENSORRT=1 pip-installs it on x86);
#   4. changenet-trt doctor.
# Everything it prints is also kept in gpu-check-output/ (the pipeline figures in pipeline.json).
# Exit status: 0 when both the tests and doctor pass and the CUDA tier really ran.
#
# On a machine without network (a line PC, an air-gapped test rig): OFFLINE_WHEELS=DIR takes every
# package from DIR and the interpreter's own site-packages (pip --no-index), installs only what the
# GPU tiers need (the package itself, not the dev/lint tools) into VENV, and builds pycuda from the
# source distribution in DIR. Point VENV at an existing environment that already has numpy, onnx,
# onnxruntime, opencv-python-headless, tqdm and pytest (VENV=$(python3 -c 'import sys; print(sys.prefix)')).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
OUT=${OUT:-gpu-check-output}
JOBS=$(nproc 2>/dev/null || echo 2)
BIN="$VENV/bin"

for cuda in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$cuda" ] && [ -x "$cuda/bin/nvcc" ]; then
        export CUDA_HOME="$cuda" CUDA_ROOT="$cuda" PATH="$cuda/bin:$PATH"
        break
    fi
done

if [ -n "${OFFLINE_WHEELS:-}" ]; then
    [ -d "$OFFLINE_WHEELS" ] || { echo "error: OFFLINE_WHEELS=$OFFLINE_WHEELS is not a folder" >&2; exit 2; }
    [ -x "$BIN/python" ] || { echo "error: OFFLINE_WHEELS needs an existing environment in VENV (found no $BIN/python)" >&2; exit 2; }
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$(cd "$OFFLINE_WHEELS" && pwd)"
    "$BIN/python" -m pip install --quiet --no-build-isolation -e .
else
    make install PYTHON="$PYTHON" VENV="$VENV"
fi
mkdir -p "$OUT"

if ! "$BIN/python" -c "import pycuda.driver" 2>/dev/null; then
    echo "== pycuda: building from source with $JOBS parallel compiler jobs"
    command -v nvcc >/dev/null || { echo "error: nvcc not found: install the CUDA toolkit or set CUDA_HOME" >&2; exit 2; }
    "$BIN/python" -m pip install --quiet setuptools wheel numpy pytools platformdirs mako
    start=$(date +%s)
    PYTHONPATH="$PWD/scripts/parallel_compile${PYTHONPATH:+:$PYTHONPATH}" CHANGENET_BUILD_JOBS="$JOBS" \
        MAKEFLAGS="-j$JOBS" "$BIN/python" -m pip install --no-build-isolation --no-cache-dir "pycuda>=2022.1"
    echo "== pycuda built in $(( $(date +%s) - start )) s"
fi
if [ "${WITH_TENSORRT:-0}" = 1 ] && ! "$BIN/python" -c "import tensorrt" 2>/dev/null; then
    "$BIN/python" -m pip install tensorrt
fi

status=0
GPU_CHECK_REPORT="$OUT/pipeline.json" "$BIN/python" -m pytest -m gpu -rs -v -s -p no:cacheprovider \
    tests/gpu/test_real_cuda.py tests/gpu/test_real_tensorrt.py 2>&1 | tee "$OUT/pytest-gpu.txt" || status=1
if grep -q "SKIPPED.*test_real_cuda.py" "$OUT/pytest-gpu.txt"; then
    echo "error: the CUDA tier did not run (reason above)" >&2
    status=1
fi
"$BIN/changenet-trt" doctor --json "$OUT/doctor.json" 2>&1 | tee "$OUT/doctor.txt" || status=1
echo "== outputs in $OUT/ (status $status)"
exit $status
