"""FP32 vs FP16 vs INT8 under ONNX Runtime on PIPED (or any MVTec-layout sets): accuracy and speed.

    .venv/bin/python -m scripts.bench_precision [--root ../shared/data/piped]
        [--categories PA_BDP01_TL,...] [--methods patchcore,padim] [--calib-method minmax]
        [--size 256] [--threads 2] [--seconds 4] [--work /tmp/bench_precision] [--explain]

For each method and category: train a bundle (cached under --work), add the fp16 and int8
variants with `edge quantize`'s code (TensorRT check off: it is checked in the tests), and
print image AUROC of each against FP32 on the test split, the largest score difference
(relative to the bundle's threshold), and frames per second of the FP32 and INT8 graphs
measured side by side: batch 1, the engines taking turns in rounds after a warm-up, median
seconds per frame (model only: no image reading or resizing). FP16 speed is not measured:
ONNX Runtime on a CPU has no fast FP16 kernels; only its accuracy matters here.
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
        from train.trainer import train_bundle
        train_bundle(method, data, out, size=(size, size), evaluate=False)
    return out


def side_by_side(paths, frames, threads, seconds):
    """Median seconds per frame for each graph, measured in alternating rounds."""
    from edge.engines.onnxrt import OrtEngine

    engines = [OrtEngine(p, threads=threads) for p in paths]
    for e in engines:
        for f in frames[:3]:
            e.infer(f[None])
    times = [[] for _ in engines]
    t_end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < t_end or min(len(t) for t in times) < 10:
        for k, e in enumerate(engines):
            f = frames[i % len(frames)][None]
            t = time.perf_counter()
            e.infer(f)
            times[k].append(time.perf_counter() - t)
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


def explain(path, threads, seconds):
    """Why INT8 is (not) faster: per-op profile of FP32 and INT8, and an upper bound: the
    pre-processed FP32 graph and the backbone quantized as ONNX Runtime prefers it (uint8
    asymmetric activations; TensorRT cannot take that graph), all timed side by side."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from convert.int8 import _Reader
    from convert.quantize import calibration_images, evaluation_set, preprocess_graph, split_graph
    from edge.bundle import Bundle

    b = Bundle(path)
    frames = evaluation_set(b)[0][:16]
    with tempfile.TemporaryDirectory() as tmp:
        pre, u8 = os.path.join(tmp, "fp32_pre.onnx"), os.path.join(tmp, "int8_u8_ort_only.onnx")
        model = preprocess_graph(b.graph_path("fp32"))
        onnx.save(model, pre)
        backbone, inits = set(split_graph(model)[0]), {i.name for i in model.graph.initializer}
        targets = [n.name for n in model.graph.node if n.name in backbone and (
            n.op_type in ("Conv", "Clip") or (n.op_type == "Add" and not any(t in inits for t in n.input)))]
        quantize_static(pre, u8, _Reader(calibration_images(b, None, 16)), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv", "Add", "Clip"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=targets,
                        extra_options={"QuantizeBias": False, "ActivationSymmetric": False, "WeightSymmetric": True})
        graphs = [("fp32 (bundle)", b.graph_path("fp32")), ("fp32 pre-processed", pre),
                  ("int8 (bundle, for TensorRT)", b.graph_path("int8")), ("int8 u8 asymmetric (ORT only)", u8)]
        times = side_by_side([g for _, g in graphs], frames, threads, seconds)
        print(f"\n{os.path.basename(path)} ({b.method}): frames/s side by side, batch 1, {threads} threads")
        for (name, g), t in zip(graphs, times):
            by_op, nq, nc = ort_profile(g, frames, threads)
            top = ", ".join(f"{k} {v:.2f}" for k, v in by_op.most_common(6))
            print(f"  {name:<31}{1 / t:7.1f} fps  ({1 / t * times[0]:.2f}x)  QLinearConv {nq:2d} Conv {nc:2d}  "
                  f"ms/frame by op: {top}")


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
                    help="for the first method and category also: per-op profiles and an ORT-only upper bound")
    args = ap.parse_args(argv)

    from convert.quantize import evaluation_set, quantize_bundle
    from edge.bundle import Bundle
    from edge.progress import say

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
            i8 = quantize_bundle(path, "int8", calib_method=args.calib_method, trt=False, log=quiet)["accuracy"]
            f16 = None if args.no_fp16 else quantize_bundle(path, "fp16", trt=False, log=quiet)["accuracy"]
            b = Bundle(path)
            frames = evaluation_set(b)[0][:16]
            t32, t8 = side_by_side([b.graph_path("fp32"), b.graph_path("int8")], frames, args.threads, args.seconds)
            rows.append((method, cat, i8, f16, 1 / t32, 1 / t8))
            say(f"{method} {cat}: AUROC fp32 {i8['image_auroc_fp32']:.4f} int8 {i8['image_auroc']:.4f}"
                + (f" fp16 {f16['image_auroc']:.4f}" if f16 else "")
                + f"; {1 / t32:.1f} vs {1 / t8:.1f} frames/s")

    print(f"\nONNX Runtime, {args.threads} threads, batch 1, {args.size}x{args.size}; AUROC drop = FP32 - variant "
          f"(image level, test split); score diff = largest |variant - FP32| / threshold; errors = misclassified "
          f"test images: FP32 / INT8 at FP32's threshold / INT8 at its own threshold")
    hdr = (f"{'method':<10}{'category':<14}{'AUROC fp32':>11}{'int8':>8}{'drop':>8}{'score diff':>11}"
           f"{'errors':>9}{'fp16':>8}{'drop':>8}{'score diff':>11}{'fps fp32':>10}{'fps int8':>10}{'speed-up':>9}")
    print(hdr)
    print("-" * len(hdr))
    for method, cat, i8, f16, f32fps, i8fps in rows:
        flips = f"{i8['errors_fp32']}/{i8['errors_at_fp32_threshold']}/{i8.get('errors_at_own_threshold', '-')}"
        f16cols = (f"{f16['image_auroc']:>8.4f}{f16['auroc_drop']:>8.4f}{f16['max_score_diff_rel']:>10.2%} "
                   if f16 else f"{'-':>8}{'-':>8}{'-':>11}")
        print(f"{method:<10}{cat:<14}{i8['image_auroc_fp32']:>11.4f}{i8['image_auroc']:>8.4f}{i8['auroc_drop']:>8.4f}"
              f"{i8['max_score_diff_rel']:>10.2%} {flips:>9}{f16cols}{f32fps:>10.1f}{i8fps:>10.1f}{i8fps / f32fps:>8.2f}x")
    for method in args.methods.split(","):
        r = [x for x in rows if x[0] == method]
        if not r:
            continue
        drops8 = [x[2]["auroc_drop"] for x in r]
        drops16 = [x[3]["auroc_drop"] for x in r if x[3]]
        sp = [x[5] / x[4] for x in r]
        print(f"{method}: int8 AUROC drop mean {np.mean(drops8):+.4f} max {max(drops8):+.4f}"
              + (f"; fp16 drop max {max(drops16):+.4f}" if drops16 else "")
              + f"; int8 speed-up median {statistics.median(sp):.2f}x (min {min(sp):.2f}x, max {max(sp):.2f}x)")
    if args.explain and rows:
        explain(os.path.join(args.work, rows[0][0], rows[0][1]), args.threads, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
