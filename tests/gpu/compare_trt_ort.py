"""Check TensorRT against ONNX Runtime on real images (run by tests/gpu/run_gpu_checks.sh).

    python -m tests.gpu.compare_trt_ort BUNDLE [IMAGES_DIR] [--batch 4] [--max-images 32]
    python -m tests.gpu.compare_trt_ort --ready    # exit 0: TensorRT and a GPU are here;
                                                   # 3: no TensorRT (nothing to check);
                                                   # 1: TensorRT but nothing can run it

For each precision the bundle holds, the TensorRT plan (built beforehand by `edge build`) and
ONNX Runtime run the same graph on the same frames; maps and scores must agree within the
precision's tolerance (relative to the largest map value). Exit 1 on a mismatch."""

import argparse
import sys
import time

import numpy as np

# relative tolerance on maps and scores, per precision
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 6e-2}


NO_TENSORRT = 3


def gpu_state():
    """("run", ""), ("skip", why) where TensorRT is not installed, or ("fail", why) where
    TensorRT is installed but no CUDA binding and device can run it (a broken or mismatched
    pycuda/cuda-python is a failure to report, not a reason to skip)."""
    try:
        import tensorrt
    except Exception as exc:
        return "skip", f"TensorRT not importable ({exc})"
    from edge.engines.cuda import get_api

    version = getattr(tensorrt, "__version__", "?")
    try:
        count = get_api().device_count()
    except Exception as exc:
        return "fail", f"TensorRT {version} is installed but nothing can run it: {exc}"
    if not count:
        return "fail", f"TensorRT {version} is installed but CUDA sees no device"
    return "run", ""


def ready():
    return gpu_state()[1]


def load_frames(bundle, folder, limit):
    from edge.runtime.preprocess import Preprocessor

    h, w = bundle.input_hw
    if folder:
        from edge.common.imageio import list_images, read_rgb

        pre = Preprocessor.for_bundle(bundle)
        paths = list_images(folder)[:limit]
        if paths:
            return np.stack([pre(read_rgb(p)) for p in paths]), f"{len(paths)} images from {folder}"
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, size=(min(limit, 16), h, w, 3), dtype=np.uint8),
            "random frames (no image folder given)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("images", nargs="?", help="folder of images (default: random frames)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-images", type=int, default=32)
    ap.add_argument("--ready", action="store_true", help="only say whether TensorRT and a GPU are here")
    args = ap.parse_args(argv)
    state, why = gpu_state()
    if state == "skip":
        print(f"skip: {why}")
        return NO_TENSORRT if args.ready else 0
    if state == "fail":
        print(f"FAILED: {why}")
        return 1
    if args.ready:
        return 0
    from edge.bundle.manifest import Bundle
    from edge.engines import open_engine
    from edge.engines.onnxrt import OrtEngine

    bundle = Bundle(args.bundle)
    frames, what = load_frames(bundle, args.images, args.max_images)
    print(f"comparing on {what}")
    failed = 0
    for precision in bundle.precisions():
        tol = TOLERANCE.get(precision, 6e-2)
        # The very graph the plan was built from (for int8: model.int8.onnx, not the
        # ONNX Runtime form that `open_engine(..., "onnxruntime", "int8")` would pick).
        with OrtEngine(bundle.graph_path(precision, "tensorrt")) as ort_engine:
            m0, s0 = ort_engine.infer(frames)
        with open_engine(bundle, "tensorrt", precision=precision, batch=args.batch) as trt_engine:
            trt_engine.infer(frames[:1])                       # warm-up
            t0 = time.perf_counter()
            m1, s1 = trt_engine.infer(frames)
            dt = time.perf_counter() - t0
        scale = max(float(np.abs(m0).max()), 1e-6)
        map_err = float(np.abs(m1 - m0).max()) / scale
        score_err = float(np.abs(s1 - s0).max()) / scale
        ok = m1.shape == m0.shape and map_err <= tol and score_err <= tol
        failed += not ok
        print(f"{precision}: {'ok' if ok else 'MISMATCH'}  max map error {map_err:.2e}, "
              f"max score error {score_err:.2e} (relative, tolerance {tol:.0e}); "
              f"TensorRT {len(frames) / dt:.1f} frames/s on this run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
