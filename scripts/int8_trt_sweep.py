"""INT8 for TensorRT: what each calibration choice and each layer kept in FP16 costs in accuracy.

    .venv/bin/python -m scripts.int8_trt_sweep BUNDLE [--methods minmax,percentile,entropy]
        [--calib-images 32,128] [--fp16-layers 0,1,2,4,8,12,16] [--percentile 99.99] [--graph G.onnx]

Builds the graph `edge quantize` gives TensorRT (model.int8.onnx: int8 symmetric activations,
per-channel int8 weights) for each calibration method and image count, runs it with its Q/DQ
simulated in float (the arithmetic TensorRT does) on the bundle's test split and prints the
image AUROC drop against FP32. With --fp16-layers, the backbone layers are ranked once by
measured sensitivity (convert.int8_tune: the mean score error on 16 calibration images each
layer removes when left out of INT8), and the first k of them are put in FP16 for each k: the
drop, and the share of the backbone's multiply-adds those layers carry (what they cost on
TensorRT, which runs them in FP16 instead of INT8). The ranking uses calibration images only,
never the test split. Benchmark figures, not tests.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import onnx
from onnx import numpy_helper


def weight_granularity(q):
    """(per-channel, per-tensor) counts of the quantized convolutions' weight scales."""
    from convert.int8_tune import _producers, quantized_convs

    prod, inits = _producers(q), {i.name: i for i in q.graph.initializer}
    per_channel = per_tensor = 0
    nodes = {n.name: n for n in q.graph.node}
    for name in quantized_convs(q):
        dq = prod[nodes[name].input[1]]
        scale = numpy_helper.to_array(inits[dq.input[1]])
        if scale.size > 1:
            per_channel += 1
        else:
            per_tensor += 1
    return per_channel, per_tensor


def conv_macs(model):
    """{conv node name: multiply-adds per frame} from the graph's inferred shapes."""
    from onnx import shape_inference

    m = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output)}
    inits = {i.name: i.dims for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "Conv" and n.input[1] in inits and n.output[0] in shapes:
            w = inits[n.input[1]]                                  # C_out, C_in/groups, kh, kw
            o = shapes[n.output[0]]
            if len(o) == 4 and all(o[1:]):
                out[n.name] = int(np.prod(o[1:]) * np.prod(w[1:]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--methods", default="minmax")
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--calib-images", default="32", help="comma-separated counts; '' for none")
    ap.add_argument("--fp16-layers", default="", help="comma-separated k: the k most sensitive layers in FP16")
    ap.add_argument("--graph", action="append", default=[],
                    help="also evaluate this quantized graph (e.g. one from NVIDIA Model Optimizer); repeatable")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()

    from convert.int8 import convert_int8
    from convert.int8_tune import SENSITIVITY_IMAGES, bypass, layers_to_fp16, quantized_layers, score_error
    from convert.qdq_float import save_float_simulation
    from convert.quantize import calibration_images, evaluation_set, preprocess_graph, split_graph
    from edge.bundle.manifest import Bundle
    from edge.common import metrics
    from edge.engines.onnxrt import OrtEngine
    from train.evaluate import run_engine

    b = Bundle(a.bundle)
    model = preprocess_graph(b.graph_path("fp32"))
    backbone = split_graph(model)[0]
    images, labels, _m, where = evaluation_set(b)
    fp32 = run_engine(OrtEngine(b.graph_path("fp32"), threads=a.threads), images, 8)[1]
    a32 = metrics.auroc(labels, fp32)
    print(f"{a.bundle}: FP32 image AUROC {a32:.4f} on {where} ({len(images)} images), threshold {b.threshold:.4g}")
    tmp = tempfile.mkdtemp(prefix="int8-sweep-")

    def evaluate(q, tag):
        src = os.path.join(tmp, "q.onnx")
        onnx.save(q, src)
        eng = OrtEngine(save_float_simulation(src, os.path.join(tmp, "f.onnx")), threads=a.threads)
        s = run_engine(eng, images, 8)[1]
        diff = np.abs(s - fp32) / b.threshold
        print(f"  {tag:48} AUROC {metrics.auroc(labels, s):.4f} drop {a32 - metrics.auroc(labels, s):+.4f}  "
              f"score diff mean {diff.mean():.1%} max {diff.max():.1%}", flush=True)

    for path in a.graph:
        evaluate(onnx.load(path), os.path.basename(path))
    macs = conv_macs(model)
    for count in [int(c) for c in a.calib_images.split(",") if c.strip()]:
        calib = calibration_images(b, None, count)
        for method in a.methods.split(","):
            t = time.monotonic()
            q = convert_int8(model, backbone, calib, method, a.percentile if method == "percentile" else None)
            pc, pt = weight_granularity(q)
            tag = f"{method}{' ' + str(a.percentile) if method == 'percentile' else ''}, {count} images"
            print(f" {tag}: weight scales per channel on {pc} convolutions, per tensor on {pt} "
                  f"({time.monotonic() - t:.0f} s)")
            evaluate(q, "all layers INT8")
            ks = [int(k) for k in a.fp16_layers.split(",") if k.strip()]
            if not ks:
                continue
            pick = np.linspace(0, len(calib) - 1, min(SENSITIVITY_IMAGES, len(calib))).round().astype(int)
            ref = run_engine(OrtEngine(b.graph_path("fp32"), threads=a.threads), calib[pick], 8)[1]
            err_all = score_error(q, calib[pick], ref, b.threshold, a.threads)
            layers = quantized_layers(q)
            gain = {n: err_all - score_error(bypass(q, model, {n}), calib[pick], ref, b.threshold, a.threads)
                    for n in layers}
            order = sorted(layers, key=lambda n: -gain[n])
            total = sum(macs.values())
            print(f"  score error all INT8 {err_all:.1%} of the threshold on {len(pick)} calibration images; "
                  f"most sensitive: " + ", ".join(f"{n} ({gain[n]:+.1%})" for n in order[:6]))
            for k in ks:
                names = set(order[:k])
                share = sum(macs.get(n, 0) for n in names) / total
                evaluate(layers_to_fp16(bypass(q, model, names), names) if k else q,
                         f"{k} layers FP16 ({share:.0%} of conv MACs)")


if __name__ == "__main__":
    main()
