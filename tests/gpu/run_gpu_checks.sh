#!/usr/bin/env bash
# GPU checks for a bundle on the device: build TensorRT plans as the service does, compare
# TensorRT with ONNX Runtime on real images, infer from a second thread, run a DLA plan where
# the device has DLA, run `edge run` on a plan the way the service loads it, and benchmark.
#
# Exit 0 with "skipped" only where TensorRT is not installed at all. Where TensorRT is
# installed but nothing can run it (no CUDA binding, a binding for another CUDA major, no
# device), the checks FAIL (exit 1): that box would not start the service either.
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

ready=0
"$PY" -m tests.gpu.compare_trt_ort --ready || ready=$?
case $ready in
  0) ;;
  3) echo "GPU checks skipped: TensorRT is not installed on this machine."; exit 0 ;;
  *) echo "GPU checks FAILED: TensorRT is installed but cannot run here (see above)." >&2; exit 1 ;;
esac

set -e
precisions=$("$PY" -c "import sys; from edge.bundle.manifest import Bundle; print(','.join(Bundle(sys.argv[1]).precisions()))" "$BUNDLE")
MAXB=${BATCHES##*,}
# The precision the service would run: fp16 where the bundle has it.
case ",$precisions," in
  *,fp16,*) SERVICE_PRECISION=fp16 ;;
  *,int8,*) SERVICE_PRECISION=int8 ;;
  *) SERVICE_PRECISION=fp32 ;;
esac

echo "== edge build $BUNDLE --precision $precisions --batch $BATCHES"
start=$(date +%s)
"$PY" -m edge.cli build "$BUNDLE" --precision "$precisions" --batch "$BATCHES"
echo "   (took $(( $(date +%s) - start )) s; again, from the cache:)"
"$PY" -m edge.cli build "$BUNDLE" --precision "$precisions" --batch "$BATCHES"

echo "== TensorRT against ONNX Runtime"
"$PY" -m tests.gpu.compare_trt_ort "$BUNDLE" ${IMAGES:+"$IMAGES"} --batch "$MAXB"

echo "== infer from a second thread (the pipeline's edge-infer thread)"
"$PY" -m tests.gpu.service_checks threads "$BUNDLE" --precision "$SERVICE_PRECISION" --batch "$MAXB"

echo "== DLA"
cores=$("$PY" -m tests.gpu.service_checks dla-cores)
if [ "$cores" -gt 0 ] && [ "$SERVICE_PRECISION" != fp32 ]; then
  # DLA plans have one static batch.
  "$PY" -m edge.cli build "$BUNDLE" --precision "$SERVICE_PRECISION" --batch "$MAXB" --dla 0
  "$PY" -m tests.gpu.service_checks dla "$BUNDLE" --precision "$SERVICE_PRECISION" --batch "$MAXB" --core 0
elif [ "$cores" -gt 0 ]; then
  echo "   the device has $cores DLA core(s) but the bundle has no fp16/int8 graph (DLA runs only those); not checked"
else
  echo "   this device has no DLA; not checked"
fi

echo "== edge run on the plan, as the service runs it ($SERVICE_PRECISION, batch $MAXB)"
"$PY" -m tests.gpu.service_checks run "$BUNDLE" ${IMAGES:+"$IMAGES"} --precision "$SERVICE_PRECISION" --batch "$MAXB"

echo "== pytest -m gpu"
"$PY" -m pytest -q -m gpu tests/test_trt_build.py tests/test_cuda_threads.py

echo "== edge bench"
if "$PY" -c "import edge.tools.bench" 2>/dev/null; then
  "$PY" -m edge.cli bench "$BUNDLE" --engines onnxruntime,tensorrt
else
  echo "   edge bench is not installed yet (edge/tools/bench.py); skipped"
fi
echo "GPU checks passed."
