"""INT8 variant: an explicitly quantized graph (QuantizeLinear/DequantizeLinear pairs).

Only the backbone is quantized; the feature concat, the method's head, the map smoothing and
the score stay in FP32. Choices, each for a reason:
  * QDQ format: TensorRT reads precision from Q/DQ pairs (TensorRT 10 deprecated the INT8
    calibrators, TensorRT 11 removed them); ONNX Runtime fuses the pairs into QLinearConv.
  * weights: symmetric int8, per output channel (depthwise convs have a few channels each with
    its own range: per-tensor weight scales lose most of them).
  * activations: int8, per tensor, symmetric (zero point 0), which is what TensorRT supports.
  * Q/DQ on the inputs of convolutions and residual adds only, not on their outputs (NVIDIA's
    placement for TensorRT): a Q/DQ on a convolution's output quantizes the pre-activation,
    whose symmetric range (tens, both signs) leaves a few levels for the [0, 6] ReLU6 keeps;
    on bsdata PatchCore that alone cost 0.032 image AUROC (docs/precision.md). TensorRT fuses
    the activation into the convolution and quantizes after it.
  * biases stay float (`QuantizeBias: False`): TensorRT's parser rejects INT32 bias Q/DQ.
  * calibration: good training images through the bundle's own preprocessing; the range
    method (MinMax, Entropy or Percentile) was chosen by measurement (docs/precision.md).
"""

import os
import tempfile

import numpy as np
import onnx

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION = "minmax"
# Ops quantized inside the backbone. Clip (ReLU6) needs no Q/DQ of its own: its range is the
# following Q's range, and ONNX Runtime and TensorRT fuse it into the conv.
QUANTIZED_OPS = ["Conv", "Add"]


class _Reader:
    """onnxruntime CalibrationDataReader over N x H x W x 3 uint8 frames, a few at a time."""

    def __init__(self, images, input_name="frames", batch=1):
        self.images, self.input_name, self.batch, self.pos = images, input_name, batch, 0

    def get_next(self):
        if self.pos >= len(self.images):
            return None
        chunk = self.images[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {self.input_name: np.ascontiguousarray(chunk)}

    def rewind(self):
        self.pos = 0


def backbone_targets(model, backbone_nodes, ops=("Conv",), skip=()):
    """Names of the backbone nodes to quantize: those of `ops`, plus residual adds (both inputs
    activations). The input normalisation (a Mul and an Add by constants on the frames)
    stays in FP32 ahead of the first Q; names in `skip` stay FP32 too."""
    inits = {i.name for i in model.graph.initializer}
    backbone_nodes = set(backbone_nodes)
    return [n.name for n in model.graph.node if n.name in backbone_nodes and n.name not in skip and (
        n.op_type in ops or (n.op_type == "Add" and not any(t in inits for t in n.input)))]


def quantize_qdq(model, images, targets, op_types, activations, method, extra, percentile=99.999,
                 reduce_range=False):
    """onnxruntime's static QDQ quantization of `targets` (node names) in a ModelProto, int8
    symmetric per-channel weights, float biases, calibrated on `images`; `activations`:
    "int8" or "uint8"; `extra`: more of quantize_static's extra_options; `reduce_range`: 7-bit
    weights (-64..64)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
          "percentile": CalibrationMethod.Percentile}[method]
    options = {"QuantizeBias": False,         # TensorRT rejects INT32 bias Q/DQ
               "WeightSymmetric": True, "CalibMovingAverage": False, **extra}
    if method == "percentile":
        options["CalibPercentile"] = float(percentile)
    act = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activations]
    with tempfile.TemporaryDirectory(prefix="edge-int8-") as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        quantize_static(
            src, dst, _Reader(images), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
            per_channel=True, reduce_range=reduce_range, activation_type=act, weight_type=QuantType.QInt8,
            nodes_to_quantize=targets, calibrate_method=cm, extra_options=options)
        return onnx.load(dst)


def convert_int8(model, backbone_nodes, images, method=DEFAULT_CALIBRATION, percentile=None, dedicated=True,
                 skip=(), outputs=False):
    """FP32 ModelProto (pre-processed) -> QDQ ModelProto with `backbone_nodes` (names) quantized,
    calibrated on `images` (N x H x W x 3 uint8, the bundle's preprocessing): activation
    ranges by convert.calibrate (max, percentile or entropy). `outputs`: also Q/DQ on the
    outputs of the quantized ops (onnxruntime's default; kept to measure what it costs)."""
    from . import calibrate

    targets = backbone_targets(model, backbone_nodes, skip=skip)
    value_ranges = calibrate.ranges(model, calibrate.activation_tensors(model, targets), images, method,
                                    percentile or calibrate.DEFAULT_PERCENTILE)
    extra = {
        "ActivationSymmetric": True,    # zero point 0 (TensorRT)
        # One Q/DQ pair per consumer: ONNX Runtime fuses DQ -> Conv -> Q into QLinearConv only
        # when each pair has one consumer (a residual branch otherwise stays in FP32).
        "DedicatedQDQPair": dedicated,
        "TensorQuantOverrides": calibrate.overrides(value_ranges),
    }
    if not outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(QUANTIZED_OPS)
    return quantize_qdq(model, images, targets, QUANTIZED_OPS, "int8", "minmax", extra)


def int8_summary(model):
    """Counts for the manifest and the tests: Q/DQ pairs, quantized convs, INT32 tensors."""
    ops = [n.op_type for n in model.graph.node]
    return {"quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
            "int8_initializers": sum(1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8),
            "int32_initializers": sum(1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32)}


def float_feature_taps(model, backbone_nodes):
    """The head reads the backbone's features unquantized: a head node reading a
    DequantizeLinear of a QuantizeLinear reads the Q's float input instead (the backbone's
    next layer keeps its quantized input). In place; returns how many inputs changed."""
    from .int8_ort import prune

    prod = {o: n for n in model.graph.node for o in n.output}
    inside = set(backbone_nodes)
    changed = 0
    for n in model.graph.node:
        if n.name in inside or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, t in enumerate(n.input):
            dq = prod.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]
                changed += 1
    prune(model)
    return changed
