"""Activation ranges for INT8, from good images: max, percentile or entropy.

onnxruntime's own Entropy calibrator builds its histograms with 128 bins and looks for the
best of 128 quantized levels in them, so it can only return the full range: on these graphs
it gave exactly MinMax's scales. This module computes the ranges itself and hands them to
onnxruntime's quantizer as TensorQuantOverrides (rmin, rmax):

  * minmax: the largest |value| seen;
  * percentile: the P-th percentile of |value| (2048-bin histogram; default 99.99);
  * entropy: TensorRT's method: of the clipping points on a 2048-bin histogram of |value|,
    the one whose 128-level quantization of the clipped distribution is closest (KL
    divergence) to the distribution itself.

Symmetric ranges only (zero point 0): what TensorRT takes.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

BINS = 2048
LEVELS = 128
DEFAULT_PERCENTILE = 99.99


def _session(model, tensors):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in known:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _batches(sess, tensors, images, batch=4):
    name = sess.get_inputs()[0].name
    for i in range(0, len(images), batch):
        yield dict(zip(tensors, sess.run(tensors, {name: images[i:i + batch]})))


def entropy_threshold(hist, width, levels=LEVELS):
    """TensorRT-style KL search on a histogram of |x| with bins of `width`: the clipping value."""
    hist = hist.astype(np.float64)
    best, best_i = np.inf, len(hist)
    for i in range(levels, len(hist) + 1, 8):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = hist[:i] > 0
        # quantize hist[:i] into `levels` bins, expand back over the nonzero source bins
        edges = np.linspace(0, i, levels + 1).round().astype(int)[:-1]
        sums, counts = np.add.reduceat(hist[:i], edges), np.add.reduceat(nz.astype(np.float64), edges)
        per = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        q = np.where(nz, np.repeat(per, np.diff(np.append(edges, i))), 0.0)
        if p.sum() == 0:
            continue
        mask = p > 0
        pn, qn = p / p.sum(), q / max(q.sum(), 1e-30)
        qm = np.where(qn[mask] > 0, qn[mask], 1e-12)
        kl = float((pn[mask] * np.log(pn[mask] / qm)).sum())
        if kl < best:
            best, best_i = kl, i
    return (best_i + 0.5) * width


def ranges(model, tensors, images, method="entropy", percentile=DEFAULT_PERCENTILE):
    """{tensor: (-T, T)} for FP32 `tensors` of `model` over `images` (N x H x W x 3 uint8)."""
    tensors = list(dict.fromkeys(tensors))
    sess = _session(model, tensors)
    absmax = dict.fromkeys(tensors, 0.0)
    for out in _batches(sess, tensors, images):
        for t, v in out.items():
            absmax[t] = max(absmax[t], float(np.abs(v).max()))
    if method == "minmax":
        return {t: (-m, m) for t, m in absmax.items() if m > 0}
    hists = {t: np.zeros(BINS, np.int64) for t in tensors}
    for out in _batches(sess, tensors, images):
        for t, v in out.items():
            if absmax[t] > 0:
                hists[t] += np.histogram(np.abs(v), bins=BINS, range=(0, absmax[t]))[0]
    res = {}
    for t in tensors:
        width = absmax[t] / BINS
        if absmax[t] == 0:
            continue                    # all zero: left to the quantizer
        if method == "percentile":
            c = np.cumsum(hists[t]) / hists[t].sum()
            thr = (np.searchsorted(c, percentile / 100.0) + 1) * width
        elif method == "entropy":
            thr = entropy_threshold(hists[t], width)
        else:
            raise ValueError(method)
        thr = min(float(thr), absmax[t])
        res[t] = (-thr, thr)
    return res


def activation_tensors(model, targets):
    """The float tensors the quantizer will put Q/DQ on for the nodes `targets`: their
    non-constant inputs and their outputs."""
    inits = {i.name for i in model.graph.initializer}
    names = set(targets)
    out = []
    for n in model.graph.node:
        if n.name in names:
            out += [t for t in n.input[:1] if t and t not in inits]
            if n.op_type == "Add":
                out += [t for t in n.input if t and t not in inits]
            out += [t for t in n.output if t]
    return out


def overrides(value_ranges):
    """TensorQuantOverrides for onnxruntime's quantizer."""
    return {t: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for t, (lo, hi) in value_ranges.items()}
