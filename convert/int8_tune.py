"""INT8 for TensorRT: which backbone layers stay out of INT8, chosen by measured sensitivity.

TensorRT needs symmetric int8 activations (zero point 0). How much INT8 costs depends on the
data and on where the Q/DQ pairs sit: with Q/DQ on the convolutions' outputs too, the mean
score error on steel spindles (bsdata) was 16 % of the threshold, spread over the whole
backbone; with Q/DQ on inputs only (convert.int8) it is 0.6 %, and 2-3 % or less on PIPED.
This search is the safety net for data where it is not. Measured, not guessed:

  1. the whole backbone quantized; its Q/DQ simulated in float (convert.qdq_float), run on
     SENSITIVITY_IMAGES calibration images: the score error against FP32 (mean
     |int8 - FP32| relative to the bundle's threshold);
  2. if that is over TARGET_ERROR: each quantized convolution or residual add in turn left in
     float (its input Q/DQ, and a convolution's weight Q/DQ, bypassed): how much of the error
     goes away;
  3. the most sensitive layers, greedily (each kept only if it lowers the error), until the
     error is within TARGET_ERROR or MAX_FLOAT_LAYERS are out of INT8.

The layers kept out of INT8 run in FP16 on TensorRT: their inputs are cast to FP16, their
weights and bias stored in FP16, their output cast back (TensorRT builds strongly typed
networks, so the graph states the precision).
"""

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TARGET_ERROR = 0.05        # mean |score - FP32 score| / threshold on the calibration images
MAX_FLOAT_LAYERS = 6
SENSITIVITY_IMAGES = 16


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def quantized_convs(model):
    """Names of the Conv nodes whose input and weights come through DequantizeLinear."""
    prod = _producers(model)
    return [n.name for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1
            and getattr(prod.get(n.input[0]), "op_type", "") == "DequantizeLinear"
            and getattr(prod.get(n.input[1]), "op_type", "") == "DequantizeLinear"]


def quantized_layers(model):
    """The candidates: quantized convolutions and residual adds (both inputs dequantized)."""
    prod = _producers(model)
    adds = [n.name for n in model.graph.node if n.op_type == "Add" and len(n.input) == 2
            and all(getattr(prod.get(t), "op_type", "") == "DequantizeLinear" for t in n.input)]
    return quantized_convs(model) + adds


def bypass(qdq_model, fp32_model, names):
    """A copy of `qdq_model` in which the convolutions and adds `names` read their float inputs
    (a convolution its FP32 weights, from `fp32_model`, same node names); dead Q/DQ pruned."""
    from .int8_ort import prune

    m = onnx.ModelProto()
    m.CopyFrom(qdq_model)
    prod = _producers(m)
    fp32 = {n.name: n for n in fp32_model.graph.node}
    inits = {i.name: i for i in fp32_model.graph.initializer}
    for n in m.graph.node:
        if n.name not in names:
            continue
        for k in range(2 if n.op_type == "Add" else 1):
            dq = prod[n.input[k]]
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]
        if n.op_type != "Conv":
            continue
        w = inits[fp32[n.name].input[1]]
        t = numpy_helper.from_array(numpy_helper.to_array(w), n.name + "/float_weight")
        m.graph.initializer.append(t)
        n.input[1] = t.name
    prune(m)
    return m


def score_error(model, images, ref_scores, threshold, threads=None, batch=8):
    """Mean |score - ref| / threshold of `model` (its Q/DQ simulated in float) on `images`."""
    from edge.engines.onnxrt import OrtEngine

    from .qdq_float import save_float_simulation

    with tempfile.TemporaryDirectory(prefix="edge-sens-") as tmp:
        src = os.path.join(tmp, "q.onnx")
        onnx.save(model, src)
        eng = OrtEngine(save_float_simulation(src, os.path.join(tmp, "f.onnx")), threads=threads)
        scores = np.concatenate([eng.infer(images[i:i + batch])[1] for i in range(0, len(images), batch)])
    return float(np.abs(scores - ref_scores).mean() / max(abs(threshold), 1e-12))


def choose_float_layers(qdq_model, fp32_model, images, ref_scores, threshold, target=TARGET_ERROR,
                        max_layers=MAX_FLOAT_LAYERS, threads=None, log=None):
    """(names kept out of INT8, report dict) by measured sensitivity (see the module)."""
    if len(images) > SENSITIVITY_IMAGES:
        pick = np.linspace(0, len(images) - 1, SENSITIVITY_IMAGES).round().astype(int)
        images, ref_scores = images[pick], ref_scores[pick]
    err_all = score_error(qdq_model, images, ref_scores, threshold, threads)
    report = {"error_all_int8": round(err_all, 5), "target": target, "max_layers": max_layers}
    if err_all <= target or max_layers <= 0:
        report.update(float_layers=[], error=round(err_all, 5))
        return [], report
    convs = quantized_layers(qdq_model)
    gains = {}
    for i, name in enumerate(convs):
        gains[name] = err_all - score_error(bypass(qdq_model, fp32_model, {name}), images, ref_scores, threshold,
                                            threads)
        if log:
            log(f"INT8 sensitivity: {i + 1}/{len(convs)} layers")
    order = sorted(convs, key=lambda n: -gains[n])
    chosen, err = [], err_all
    for name in order[:max_layers]:
        if gains[name] <= 0:
            break
        trial = chosen + [name]
        e = score_error(bypass(qdq_model, fp32_model, set(trial)), images, ref_scores, threshold, threads)
        if e < err:
            chosen, err = trial, e
        if err <= target:
            break
    report.update(float_layers=chosen, error=round(err, 5),
                  sensitivity={n: round(gains[n], 5) for n in order[:max(2 * max_layers, 8)]})
    return chosen, report


def layers_to_fp16(model, names):
    """The convolutions and adds `names` (float, outside Q/DQ) in FP16: inputs cast to FP16,
    weights and bias FP16, output cast back to FP32. In place; returns the model."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    for n in nodes:
        if n.name not in names:
            continue
        idx = list(model.graph.node).index(n)
        casts = []
        for k in range(2 if n.op_type == "Add" else 1):
            casts.append(helper.make_node("Cast", [n.input[k]], [f"{n.name}/in{k}_fp16"],
                                          name=f"{n.name}/cast_in{k}", to=TensorProto.FLOAT16))
            n.input[k] = f"{n.name}/in{k}_fp16"
        for k in (1, 2):
            if n.op_type == "Conv" and len(n.input) > k and n.input[k] in inits:
                arr = numpy_helper.to_array(inits[n.input[k]]).astype(np.float16)
                t = numpy_helper.from_array(arr, n.input[k] + "/fp16")
                model.graph.initializer.append(t)
                n.input[k] = t.name
        out = n.output[0]
        n.output[0] = out + "/fp16"
        cast_out = helper.make_node("Cast", [out + "/fp16"], [out], name=n.name + "/cast_out",
                                    to=TensorProto.FLOAT)
        for c in reversed(casts):
            model.graph.node.insert(idx, c)
        model.graph.node.insert(idx + len(casts) + 1, cast_out)
    from .int8_ort import prune
    prune(model)
    return model


def keep_sensitive_layers(qdq_model, fp32_model, images, threshold, threads=None, log=None, **limits):
    """(graph for TensorRT, report): `qdq_model` with the layers `choose_float_layers` picks
    taken out of INT8 and put in FP16; FP32 scores of the calibration `images` from
    `fp32_model` (the pre-processed FP32 graph)."""
    from edge.engines.onnxrt import OrtEngine

    with tempfile.TemporaryDirectory(prefix="edge-sens-") as tmp:
        src = os.path.join(tmp, "fp32.onnx")
        onnx.save(fp32_model, src)
        eng = OrtEngine(src, threads=threads)
        ref = np.concatenate([eng.infer(images[i:i + 8])[1] for i in range(0, len(images), 8)])
    names, report = choose_float_layers(qdq_model, fp32_model, images, ref, threshold, threads=threads, log=log,
                                        **limits)
    if not names:
        return qdq_model, report
    return layers_to_fp16(bypass(qdq_model, fp32_model, set(names)), set(names)), report
