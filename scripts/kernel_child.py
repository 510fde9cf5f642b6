"""Run one ONNX graph on a batch of preprocessed frames with ONNX Runtime's CPU kernels, in
whatever CPU this process finds itself on (native, `qemu-x86_64 -cpu Haswell`, an aarch64
sysroot under `qemu-aarch64`), and write the scores and the kernel family it saw.

    python scripts/kernel_child.py GRAPH FRAMES.npy OUT.npz [--batch 8] [--threads 1]

Imports numpy, onnxruntime and convert/cpu.py only (no onnx, no torch, nothing else of the
project): an emulated sysroot has just numpy and onnxruntime. OUT.npz holds `scores` (the
graph's `score` output, or its only output, as computed) and `info` (a JSON string: kernel
family, machine, versions, seconds). scripts/other_kernels.py and tests/test_other_kernels.py
run it.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from convert.cpu import cpu_features, cpu_kernels  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graph")
    p.add_argument("frames", help=".npy of N preprocessed frames, uint8, as the graph takes them")
    p.add_argument("out", help=".npz to write")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    features, source = cpu_features()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    t0 = time.perf_counter()
    sess = ort.InferenceSession(args.graph, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outputs = [o.name for o in sess.get_outputs()]
    output = "score" if "score" in outputs else outputs[0]       # a test graph has one output of its own
    frames = np.load(args.frames)
    parts = []
    for i in range(0, len(frames), args.batch):
        parts.append(sess.run([output], {name: np.ascontiguousarray(frames[i:i + args.batch])})[0])
        print(f"kernel_child: {min(i + args.batch, len(frames))}/{len(frames)}", file=sys.stderr, flush=True)
    scores = np.concatenate(parts)
    info = {"kernels": cpu_kernels(), "features_from": source, "features": sorted(features),
            "machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": ort.__version__, "threads": args.threads, "seconds": round(time.perf_counter() - t0, 2)}
    np.savez(args.out, scores=scores, info=np.array(json.dumps(info)))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
