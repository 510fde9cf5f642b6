"""FP32 vs FP16 vs INT8 under ONNX Runtime on PIPED (or any MVTec-layout sets): accuracy and speed.

    .venv/bin/python -m scripts.bench_precision [--root ../shared/data/piped]
        [--categories PA_BDP01_TL,...] [--methods patchcore,padim] [--calib-method minmax]
        [--size 256] [--threads 2] [--seconds 4] [--work /tmp/bench_precision] [--explain]

For each method and category: train a bundle (cached under --work), add the fp16 and int8
variants with `edge quantize`'s code (TensorRT check off: it is checked in the tests), and
print image AUROC of each against FP32 on the test split, the largest score difference
(relative to the bundle's threshold), and frames per second of the FP32 graph and the INT8
graph ONNX Runtime runs, measured side by side at batch 1 and 4: the engines taking turns in
rounds after a warm-up, median seconds per frame (model only: no image reading or resizing).
FP16 speed is not measured: ONNX Runtime on a CPU has no fast FP16 kernels; only its
accuracy matters here.
"""

import argparse
import os
import shutil
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def bundle_for(method, data, work, size):
    out = os.path.join(work, method, os.path.basename(data.rstrip("/")))
    if not os.path.isfile(os.path.join(out, "manifest.yaml")):
        from train.settings import TrainSettings
        from train.trainer import train_bundle
        train_bundle(TrainSettings(method, data, out, size=(size, size), evaluate=False))
    return out


def side_by_side(paths, frames, threads, seconds, batch=1):
    """Median seconds per frame for each graph, measured in alternating rounds."""
    from edge.engines.onnxrt import OrtEngine

    engines = [OrtEngine(p, threads=threads) for p in paths]
    for e in engines:
        for i in range(3):
            e.infer(frames[i:i + batch])
    times = [[] for _ in engines]
    t_end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < t_end or min(len(t) for t in times) < 10:
        for k, e in enumerate(engines):
            j = (i * batch) % (len(frames) - batch + 1)
            t = time.perf_counter()
            e.infer(frames[j:j + batch])
            times[k].append((time.perf_counter() - t) / batch)
        i += 1
    return [statistics.median(t) for t in times]


def ort_profile(path, frames, threads, runs=20):
    """(ms per run by op type, QLinearConv count, Conv count) from ONNX Runtime's profiler and
    its optimised graph."""
    import collections
    import json
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for i in range(runs):
            sess.run(None, {"frames": frames[i % len(frames)][None]})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
        ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    return by_op, ops["QLinearConv"], ops["Conv"]


def explain(path, threads):
    """Where the time goes: per-op profile of the FP32 graph and both INT8 graphs."""
    from convert.quantize import evaluation_set
    from edge.bundle.manifest import Bundle

    b = Bundle(path)
    frames = evaluation_set(b)[0][:16]
    print(f"\n{os.path.basename(path)} ({b.method}): ms per frame by op type, batch 1, {threads} threads")
    for name, g in (("fp32", b.graph_path("fp32")), ("int8 for TensorRT", b.graph_path("int8")),
                    ("int8 for ONNX Runtime", b.graph_path("int8", "onnxruntime"))):
        by_op, nq, nc = ort_profile(g, frames, threads)
        top = ", ".join(f"{k} {v:.2f}" for k, v in by_op.most_common(7))
        print(f"  {name:<22} total {sum(by_op.values()):5.2f}  QLinearConv {nq:2d} Conv {nc:2d}  {top}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "piped"))
    ap.add_argument("--categories", help="comma-separated (default: every folder under --root)")
    ap.add_argument("--methods", default="patchcore,padim")
    ap.add_argument("--calib-method", default=None, help="int8 calibration (default: convert.int8's)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="timing per bundle (default 4)")
    ap.add_argument("--no-fp16", action="store_true")
    ap.add_argument("--work", default="/tmp/bench_precision")
    ap.add_argument("--fresh", action="store_true", help="retrain the cached bundles")
    ap.add_argument("--explain", action="store_true",
                    help="for the first category also: per-op profiles of the FP32 and both INT8 graphs")
    args = ap.parse_args(argv)

    from convert.quantize import evaluation_set, quantize_bundle
    from edge.bundle.manifest import Bundle
    from edge.common.progress import say

    cats = args.categories.split(",") if args.categories else sorted(
        d for d in os.listdir(args.root) if os.path.isdir(os.path.join(args.root, d, "train")))
    if args.fresh and os.path.isdir(args.work):
        shutil.rmtree(args.work)
    rows = []
    quiet = lambda *a, **k: None  # noqa: E731
    for method in args.methods.split(","):
        for cat in cats:
            data = os.path.join(args.root, cat)
            path = bundle_for(method, data, args.work, args.size)
            entry = quantize_bundle(path, "int8", calib_method=args.calib_method, trt=False, log=quiet, force=True)
            i8, trt8 = entry["onnxruntime"]["accuracy"], entry["accuracy"]
            trt8["float_layers"] = len((entry.get("sensitivity") or {}).get("float_layers", []))
            f16 = None if args.no_fp16 else quantize_bundle(path, "fp16", trt=False, log=quiet, force=True)["accuracy"]
            b = Bundle(path)
            frames = evaluation_set(b)[0][:16]
            graphs = [b.graph_path("fp32"), b.graph_path("int8", "onnxruntime")]
            fps = [[1 / t for t in side_by_side(graphs, frames, args.threads, args.seconds, n)] for n in (1, 4)]
            rows.append((method, cat, i8, trt8, f16, fps))
            say(f"{method} {cat}: AUROC fp32 {i8['image_auroc_fp32']:.4f} int8 {i8['image_auroc']:.4f}"
                + (f" fp16 {f16['image_auroc']:.4f}" if f16 else "")
                + f"; batch 1: {fps[0][0]:.1f} vs {fps[0][1]:.1f} frames/s, batch 4: {fps[1][0]:.1f} vs {fps[1][1]:.1f}")

    from convert.qdq_float import cpu_kernels

    print(f"\nONNX Runtime, {args.threads} threads, {args.size}x{args.size}, on {cpu_kernels()}. int8 = the INT8 graph "
          f"ONNX Runtime runs (model.int8.ort.onnx), with this CPU's integer kernels; kern = their largest score "
          f"difference from the same quantized arithmetic in float / threshold; TRT = the graph for TensorRT "
          f"(model.int8.onnx), its Q/DQ simulated in float (what TensorRT computes), fl = layers kept out of INT8 "
          f"(FP16). drop = FP32 - variant image AUROC (test split); diff = largest |variant - FP32| score / "
          f"threshold; errors = misclassified test images: FP32 / int8 at FP32's threshold / int8 at its own; "
          f"chg = verdicts changed at each graph's own threshold (int8 / TRT); "
          f"fps = frames per second at batch 1 and 4, FP32 and int8 timed side by side")
    hdr = (f"{'method':<10}{'category':<13}{'AUROC':>7}{'int8':>7}{'drop':>8}{'diff':>7}{'kern':>6}{'errors':>9}"
           f"{'TRT drop':>9}{'diff':>7}{'fl':>3}{'chg':>7}{'fp16 drop':>10}{'diff':>7}"
           f"{'b1 fp32':>9}{'int8':>7}{'x':>6}{'b4 fp32':>9}{'int8':>7}{'x':>6}")
    print(hdr)
    print("-" * len(hdr))
    for method, cat, i8, trt8, f16, fps in rows:
        flips = f"{i8['errors_fp32']}/{i8['errors_at_fp32_threshold']}/{i8.get('errors_at_own_threshold', '-')}"
        f16cols = f"{f16['auroc_drop']:>10.4f}{f16['max_score_diff_rel']:>7.1%}" if f16 else f"{'-':>10}{'-':>7}"
        chg = f"{i8.get('decisions_changed_own_threshold', '-')}/{trt8.get('decisions_changed_own_threshold', '-')}"
        print(f"{method:<10}{cat:<13}{i8['image_auroc_fp32']:>7.4f}{i8['image_auroc']:>7.4f}{i8['auroc_drop']:>8.4f}"
              f"{i8['max_score_diff_rel']:>7.1%}{i8.get('integer_vs_float_max_rel', 0):>6.1%}{flips:>9}"
              f"{trt8['auroc_drop']:>9.4f}{trt8['max_score_diff_rel']:>7.1%}{trt8['float_layers']:>3}{chg:>7}"
              f"{f16cols}{fps[0][0]:>9.1f}{fps[0][1]:>7.1f}{fps[0][1] / fps[0][0]:>5.2f}x"
              f"{fps[1][0]:>9.1f}{fps[1][1]:>7.1f}{fps[1][1] / fps[1][0]:>5.2f}x")
    for method in args.methods.split(","):
        r = [x for x in rows if x[0] == method]
        if not r:
            continue
        drops8, drops_trt = [x[2]["auroc_drop"] for x in r], [x[3]["auroc_drop"] for x in r]
        drops16 = [x[4]["auroc_drop"] for x in r if x[4]]
        sp1, sp4 = [x[5][0][1] / x[5][0][0] for x in r], [x[5][1][1] / x[5][1][0] for x in r]
        print(f"{method}: int8 AUROC drop mean {np.mean(drops8):+.4f} max {max(drops8):+.4f} (TensorRT graph max "
              f"{max(drops_trt):+.4f})" + (f"; fp16 drop max {max(drops16):+.4f}" if drops16 else "")
              + f"; int8 speed-up batch 1 median {statistics.median(sp1):.2f}x (min {min(sp1):.2f}x, max "
              f"{max(sp1):.2f}x), batch 4 median {statistics.median(sp4):.2f}x (min {min(sp4):.2f}x)")
    if args.explain and rows:
        for method in args.methods.split(","):
            explain(os.path.join(args.work, method, cats[0]), args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
