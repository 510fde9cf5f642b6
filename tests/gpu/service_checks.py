"""GPU checks of the TensorRT engine the way the service uses it (run by run_gpu_checks.sh).

    python -m tests.gpu.service_checks threads BUNDLE --precision fp16 --batch 4
    python -m tests.gpu.service_checks dla BUNDLE --precision fp16 --batch 4 [--core 0]
    python -m tests.gpu.service_checks run BUNDLE [IMAGES] --precision fp16 --batch 4
    python -m tests.gpu.service_checks dla-cores        # prints the device's DLA core count

threads: the engine is opened on the main thread (as `edge run` opens its parts) and infers
         on other threads (as the pipeline's edge-infer thread does); results must equal the
         main thread's.
dla:     the plan built with `edge build --dla N` runs on that core (engine.dla) and agrees
         with ONNX Runtime within the precision's tolerance.
run:     `edge run CONFIG --quiet` in a subprocess on a config like deploy/config/example.yaml
         (engine kind tensorrt), after the plan was built as the unit's ExecStartPre does; it
         must decide every frame on TensorRT.
Exit status 1 on any failure."""

import argparse
import os
import subprocess
import sys
import tempfile
import threading

import numpy as np

from tests.gpu.compare_trt_ort import TOLERANCE, load_frames


def _open(bundle, precision, batch, dla=None):
    from edge.engines import open_engine

    return open_engine(bundle, "tensorrt", precision=precision, batch=batch, dla=dla)


def check_threads(bundle, precision, batch):
    frames, _ = load_frames(bundle, None, 2 * batch + 1)
    with _open(bundle, precision, batch) as engine:
        m0, s0 = engine.infer(frames)
        results, errors = {}, []

        def work(i):
            try:
                results[i] = engine.infer(frames)
            except Exception as exc:                 # reported below
                errors.append(f"thread {i}: {type(exc).__name__}: {exc}")
        for i in range(2):                           # one after the other: engine calls are serial
            t = threading.Thread(target=work, args=(i,), name=f"edge-infer-{i}")
            t.start()
            t.join(120)
    if errors:
        print("threads: FAILED: " + "; ".join(errors))
        return 1
    bad = [i for i, (m, s) in results.items() if not (np.array_equal(m, m0) and np.array_equal(s, s0))]
    if bad or len(results) != 2:
        print(f"threads: MISMATCH on thread(s) {bad} ({len(results)} of 2 finished)")
        return 1
    print(f"threads: ok: {len(frames)} frames inferred on 2 other threads, identical to the main thread's")
    return 0


def dla_cores():
    import tensorrt as trt

    return int(getattr(trt.Builder(trt.Logger(trt.Logger.WARNING)), "num_DLA_cores", 0))


def check_dla(bundle, precision, batch, core):
    from edge.engines.onnxrt import OrtEngine

    frames, _ = load_frames(bundle, None, batch + 1)
    with _open(bundle, precision, batch, dla=core) as engine:
        if engine.dla != core or engine.runtime.DLA_core != core:
            print(f"dla: FAILED: engine on DLA core {engine.runtime.DLA_core}, wanted {core}")
            return 1
        m1, s1 = engine.infer(frames)
        plan = os.path.basename(engine.plan_path)
    with OrtEngine(bundle.graph_path(precision, "tensorrt")) as ref:
        m0, s0 = ref.infer(frames)
    tol = TOLERANCE.get(precision, 6e-2)
    scale = max(float(np.abs(m0).max()), 1e-6)
    err = max(float(np.abs(m1 - m0).max()), float(np.abs(s1 - s0).max())) / scale
    ok = err <= tol
    print(f"dla: {'ok' if ok else 'MISMATCH'}: {plan} on DLA core {core}, max error {err:.2e} "
          f"(relative, tolerance {tol:.0e})")
    return 0 if ok else 1


def check_run(bundle, images, precision, batch, python, engine="tensorrt"):
    import cv2

    frames, _ = load_frames(bundle, images, 12)
    with tempfile.TemporaryDirectory(prefix="edge-run-") as tmp:
        folder = os.path.join(tmp, "frames")
        os.makedirs(folder)
        for i, f in enumerate(frames):
            cv2.imwrite(os.path.join(folder, f"{i:03d}.png"), f[:, :, ::-1])
        config = os.path.join(tmp, "config.yaml")
        with open(config, "w") as f:
            f.write(f"bundle: {os.path.abspath(bundle.path)}\nsource: {folder}\nmode: inspect-all\n"
                    f"engine: {{kind: {engine}, precision: {precision}, batch: {batch}}}\n"
                    f"records: {{db: {tmp}/records.db, save: none}}\n")
        proc = subprocess.run([python, "-m", "edge.cli", "run", config, "--quiet"], capture_output=True,
                              text=True, timeout=600)
    out = proc.stdout + proc.stderr
    n = len(frames)
    ok = (proc.returncode == 0 and f"on {engine} ({precision})" in out
          and f"summary: {n} frames decided of {n} captured" in out)
    print(f"run: {'ok' if ok else 'FAILED'}: edge run exit {proc.returncode}")
    if not ok:
        print(out[-3000:])
    else:
        print("   " + next((line for line in out.splitlines() if line.startswith("summary:")), ""))
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("threads", "dla", "run", "dla-cores"))
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("images", nargs="?")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--engine", default="tensorrt", help="run: the engine (onnxruntime to try the check itself)")
    args = ap.parse_args(argv)
    if args.what == "dla-cores":
        print(dla_cores())
        return 0
    from edge.bundle.manifest import Bundle

    bundle = Bundle(args.bundle)
    if args.what == "threads":
        return check_threads(bundle, args.precision, args.batch)
    if args.what == "dla":
        return check_dla(bundle, args.precision, args.batch, args.core)
    return check_run(bundle, args.images, args.precision, args.batch, sys.executable, args.engine)


if __name__ == "__main__":
    sys.exit(main())
