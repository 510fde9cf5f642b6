#!/usr/bin/env bash
# GPU checks for a bundle: build TensorRT plans, compare TensorRT with ONNX Runtime on real
# images, and benchmark. On a machine without an NVIDIA GPU and TensorRT it says so and exits 0.
#
#   tests/gpu/run_gpu_checks.sh BUNDLE [IMAGES_DIR] [BATCHES]     (BATCHES default 1,4)
#   PY=python3 tests/gpu/run_gpu_checks.sh ...                      (default: .venv/bin/python)
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 1 ]; then
  echo "usage: $0 BUNDLE [IMAGES_DIR] [BATCHES]" >&2
  exit 2
fi
BUNDLE=$1
IMAGES=${2:-}
BATCHES=${3:-1,4}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if ! "$PY" -m tests.gpu.compare_trt_ort --ready; then
  echo "GPU checks skipped: this machine has no usable NVIDIA GPU with TensorRT."
  exit 0
fi

set -e
precisions=$("$PY" -c "import sys; from edge.bundle.manifest import Bundle; print(','.join(Bundle(sys.argv[1]).precisions()))" "$BUNDLE")
MAXB=${BATCHES##*,}
echo "== edge build $BUNDLE --precision $precisions --batch $BATCHES"
start=$(date +%s)
"$PY" -m edge.cli build "$BUNDLE" --precision "$precisions" --batch "$BATCHES"
echo "   (took $(( $(date +%s) - start )) s; again, from the cache:)"
"$PY" -m edge.cli build "$BUNDLE" --precision "$precisions" --batch "$BATCHES"

echo "== TensorRT against ONNX Runtime"
"$PY" -m tests.gpu.compare_trt_ort "$BUNDLE" ${IMAGES:+"$IMAGES"} --batch "$MAXB"

echo "== pytest -m gpu"
"$PY" -m pytest -q -m gpu tests/test_trt_build.py

echo "== edge bench"
if "$PY" -c "import edge.tools.bench" 2>/dev/null; then
  "$PY" -m edge.cli bench "$BUNDLE" --engines onnxruntime,tensorrt
else
  echo "   edge bench is not installed yet (edge/tools/bench.py); skipped"
fi
echo "GPU checks passed."
