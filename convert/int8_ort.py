"""INT8 for ONNX Runtime on CPUs: the same quantization recipe, in the form ONNX Runtime's x86
and Arm kernels are fast on. TensorRT cannot take this graph; `convert.int8` writes the one it
can, and `edge quantize --precision int8` writes both (docs/precision.md).

Where it differs from the TensorRT graph, each for a measured reason:
  * weights in 7 bits (-64..64, per channel, symmetric), in the backbone and in the heads' int8
    products. ONNX Runtime's u8 x s8 kernels on x86 with AVX2 or AVX-512 but without VNNI add
    two products in 16 bits with saturation (VPMADDUBSW): 2 x 255 x 127 does not fit, 2 x 255
    x 64 does. With 8-bit weights the same graph scored up to 9 % of the threshold away from
    its own arithmetic on such a CPU; with 7 bits, within 1 %, as on VNNI and Arm, whose
    kernels do not saturate (docs/precision.md).
  * activations uint8, asymmetric per tensor (weights stay int8, symmetric, per channel; biases
    float). ONNX Runtime's fast int8 kernels are u8 x s8; its own int8 -> uint8 rewrite stops at
    residual forks, and with an asymmetric range the ReLU6 folds into the quantization.
  * the input normalisation is folded into the first convolution, so the uint8 frames are the
    first quantized tensor (scale 1, zero point 128): no float pass over the full frame.
  * a method's head may run its big product in int8 too, where the method registers a head
    rewrite (its int8_rewrites(), recorded by training in the manifest's
    precision_hints.int8_onnxruntime as [{rewrite, scope}]): the rewrites are graph patterns
    kept here by name (HEAD_REWRITES), each applied only to nodes of the given scope, so that
    nothing here knows a method. "bank_product": features against a constant bank plus its
    norms, before a minimum (one MatMulIntegerToFloat, uint8 features x int8 bank, the norms as
    its FP32 bias); "quadratic_form": differences against constant per-position matrices,
    multiplied by themselves after (MatMulInteger, int8 per position and column). Everything
    after them stays FP32. Measured with the memory bank and the inverse covariances: the
    heads' int8 adds no score error beyond the backbone's (docs/precision.md).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.common.errors import EdgeError

INPUT_ZERO_POINT = 128
WEIGHT_BITS = 7
WEIGHT_MAX = {7: 64, 8: 127}


def _inits(model):
    return {i.name: i for i in model.graph.initializer}


def _users(model, tensor):
    return [n for n in model.graph.node if tensor in n.input]


def _add_init(model, name, array):
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    return name


# ---- input normalisation -----------------------------------------------------------------
def fold_normalisation(model):
    """frames -> Cast -> Transpose -> Mul(a) -> Add(b) -> [Pad reflect] -> Conv(W, c, pads)
    becomes ... -> Mul(1) -> Add(-128) -> [Pad reflect] -> per-channel Pad -> Conv(W * a,
    c + sum W (128 a + b), no pads): the stem sees `frames - 128`, which quantizes exactly with
    scale 1 and zero point 128. The stem's zero padding (zero after normalisation) becomes an
    explicit pad with each channel's raw value that normalises to zero (-b / a: the mean), so
    the fold is exact. Returns {conv, reflect, pads, fill} for `frames_as_quantized_input`, or
    None if the pattern is not there."""
    inits = _inits(model)
    frames = model.graph.input[0].name
    chain = []
    t = frames
    for op in ("Cast", "Transpose", "Mul", "Add"):
        users = _users(model, t)
        if len(users) != 1 or users[0].op_type != op:
            return None
        chain.append(users[0])
        t = users[0].output[0]
    mul, add = chain[2], chain[3]
    consts = []
    for node in (mul, add):
        c = [x for x in node.input if x in inits]
        if len(c) != 1:
            return None
        consts.append(c[0])
    a = numpy_helper.to_array(inits[consts[0]]).astype(np.float64).reshape(-1)
    b = numpy_helper.to_array(inits[consts[1]]).astype(np.float64).reshape(-1)
    users, reflect = _users(model, t), None
    if len(users) == 1 and users[0].op_type == "Pad":
        reflect = users[0]
        if next((x.s for x in reflect.attribute if x.name == "mode"), b"constant") == b"constant":
            return None                               # a constant pad would change value
        t = reflect.output[0]
        users = _users(model, t)
    if len(users) != 1 or users[0].op_type != "Conv" or len(users[0].input) < 3:
        return None
    conv = users[0]
    attrs = {x.name: x for x in conv.attribute}
    if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
        return None
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    c = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
    channels = w.shape[1]
    a, b = np.broadcast_to(a, (channels,)), np.broadcast_to(b, (channels,))
    if not np.all(a != 0):
        return None
    fill = -b / a                                     # raw value that normalises to 0
    w_new = w * a[None, :, None, None]
    c_new = c + (w * (INPUT_ZERO_POINT * a + b)[None, :, None, None]).sum(axis=(1, 2, 3))
    conv.input[1] = _add_init(model, conv.input[1] + "_folded", w_new.astype(np.float32))
    conv.input[2] = _add_init(model, conv.input[2] + "_folded", c_new.astype(np.float32))
    mul.input[list(mul.input).index(consts[0])] = _add_init(model, "norm_one", np.ones((), np.float32))
    add.input[list(add.input).index(consts[1])] = _add_init(
        model, "norm_minus_zp", np.full((), -INPUT_ZERO_POINT, np.float32))
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
    if any(pads):
        conv.attribute.remove(attrs["pads"])
        conv.attribute.append(helper.make_attribute("pads", [0, 0, 0, 0]))
        nodes, out = _channel_pads(model, t, pads, fill - INPUT_ZERO_POINT, np.float32, "stem_pad")
        conv.input[0] = out
        _insert_before(model, conv, nodes)
    return {"conv": conv.name, "reflect": reflect, "pads": pads, "fill": fill}


def _channel_pads(model, tensor, pads, values, dtype, prefix):
    """Nodes padding NCHW `tensor` by conv-style `pads` [top, left, bottom, right] with one
    constant per channel (Pad takes one constant: split, pad each, concat)."""
    onnx_pads = _add_init(model, prefix + "/pads", np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64))
    parts = [f"{prefix}/c{i}" for i in range(len(values))]
    nodes = [helper.make_node("Split", [tensor], parts, name=prefix + "/split", axis=1)]
    for i, v in enumerate(values):
        fill = _add_init(model, f"{prefix}/fill{i}", np.array(v, dtype))
        nodes.append(helper.make_node("Pad", [parts[i], onnx_pads, fill], [parts[i] + "_padded"],
                                      name=f"{prefix}/pad{i}", mode="constant"))
    nodes.append(helper.make_node("Concat", [p + "_padded" for p in parts], [prefix + "/out"],
                                  name=prefix + "/concat", axis=1))
    return nodes, prefix + "/out"


def _insert_before(model, node, new):
    idx = list(model.graph.node).index(node)
    for k, n in enumerate(new):
        model.graph.node.insert(idx + k, n)


def frames_as_quantized_input(model, folded):
    """After quantization: the stem's input DequantizeLinear reads the uint8 frames (transposed,
    mirrored and padded with each channel's mean, all in uint8) with scale 1 and zero point 128;
    the float Cast/Mul/Add/Pad and the QuantizeLinear become dead and are pruned."""
    producer = {o: n for n in model.graph.node for o in n.output}
    stem = next(n for n in model.graph.node if n.name == folded["conv"])
    dq = producer.get(stem.input[0])
    if dq is None or dq.op_type != "DequantizeLinear":
        raise EdgeError("INT8 (ONNX Runtime): the stem convolution has no DequantizeLinear input")
    transpose = next(n for n in model.graph.node if n.op_type == "Transpose" and
                     producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "Cast"
                     and producer[n.input[0]].input[0] == model.graph.input[0].name)
    perm = list(next(x.ints for x in transpose.attribute if x.name == "perm"))
    new = [helper.make_node("Transpose", [model.graph.input[0].name], ["frames_nchw_u8"], name="frames_nchw_u8",
                            perm=perm)]
    t = "frames_nchw_u8"
    reflect = folded["reflect"]
    if reflect is not None:
        mode = next(x.s for x in reflect.attribute if x.name == "mode").decode()
        new.append(helper.make_node("Pad", [t] + list(reflect.input[1:]), ["frames_mirrored_u8"],
                                    name="frames_mirrored_u8", mode=mode))
        t = "frames_mirrored_u8"
    fill = np.clip(np.round(folded["fill"]), 0, 255)
    if any(folded["pads"]) and np.all(np.abs(folded["fill"] - INPUT_ZERO_POINT) <= 0.5 + 1e-3):
        # Every channel's mean rounds to the zero point (EfficientNet: 127.5): the quantized
        # convolution's own padding is that value already, and costs nothing.
        stem.attribute.remove(next(x for x in stem.attribute if x.name == "pads"))
        stem.attribute.append(helper.make_attribute("pads", list(folded["pads"])))
    elif any(folded["pads"]):
        nodes, t = _channel_pads(model, t, folded["pads"], fill, np.uint8, "frames_stem_pad_u8")
        new += nodes
    dq.input[0] = t
    dq.input[1] = _add_init(model, "frames_scale", np.ones((), np.float32))
    dq.input[2] = _add_init(model, "frames_zero_point", np.full((), INPUT_ZERO_POINT, np.uint8))
    _insert_before(model, dq, new)


# ---- head rewrites a method may register ------------------------------------------------------
def find_bank_product(model, scope=""):
    """(MatMul, Add bias) in `scope`: a product with a constant bank, plus the bank norms, then
    a minimum and another Add (a nearest-neighbour search), or None."""
    inits = _inits(model)
    for mm in model.graph.node:
        if not mm.name.startswith(scope):
            continue
        if mm.op_type != "MatMul" or mm.input[1] not in inits or mm.input[0] in inits:
            continue
        users = _users(model, mm.output[0])
        if len(users) != 1 or users[0].op_type != "Add" or not any(x in inits for x in users[0].input):
            continue
        bias = users[0]
        users = _users(model, bias.output[0])
        if len(users) != 1 or users[0].op_type != "ReduceMin":
            continue
        users = _users(model, users[0].output[0])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        return mm, bias
    return None


def int8_bank_product(model, head, f_range, weight_max=127):
    """|b|^2 - 2 f.b against every bank entry as one MatMulIntegerToFloat: features
    uint8 (per tensor, calibrated), bank int8 (per entry, symmetric), the bank norms as its FP32
    bias. The minimum and |f|^2 that finish the distance stay FP32."""
    mm, bias = head
    inits = _inits(model)
    bt_m2 = numpy_helper.to_array(inits[mm.input[1]]).astype(np.float64)          # D x K, = -2 bank^T
    bsq = numpy_helper.to_array(inits[next(x for x in bias.input if x in inits)]).astype(np.float32)
    col_scale = np.maximum(np.abs(bt_m2).max(axis=0), 1e-12) / weight_max
    bq = np.clip(np.round(bt_m2 / col_scale), -weight_max, weight_max).astype(np.int8)
    f_scale, f_zp = _uint8_params(f_range)
    p = "nn_search/"
    names = {k: _add_init(model, p + k, v) for k, v in {
        "f_scale": np.array(f_scale, np.float32), "f_zero_point": np.array(f_zp, np.uint8),
        "bank_q": bq, "bank_scale": col_scale.astype(np.float32), "bank_sq": bsq}.items()}
    nodes = [
        helper.make_node("QuantizeLinear", [mm.input[0], names["f_scale"], names["f_zero_point"]], [p + "f_q"],
                         name=p + "quantize"),
        helper.make_node("MatMulIntegerToFloat", [p + "f_q", names["bank_q"], names["f_scale"], names["bank_scale"],
                                                  names["f_zero_point"], "", names["bank_sq"]],
                         [bias.output[0]], name=p + "search", domain="com.microsoft"),
    ]
    _replace(model, [mm, bias], nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _uint8_params(value_range):
    """(scale, zero point) of an asymmetric uint8 quantization covering `value_range` and 0."""
    lo, hi = min(float(value_range[0]), 0.0), max(float(value_range[1]), 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def _replace(model, old, new):
    """Put `new` nodes where the first of `old` was, and drop `old`."""
    idx = min(list(model.graph.node).index(n) for n in old)
    for n in old:
        model.graph.node.remove(n)
    for k, n in enumerate(new):
        model.graph.node.insert(idx + k, n)


def find_quadratic_form(model, scope=""):
    """A per-position product diff @ A in `scope` (a MatMul by a constant P x d x d whose output
    is multiplied by its own input: a Mahalanobis distance), or None."""
    inits = _inits(model)
    for mm in model.graph.node:
        if not mm.name.startswith(scope):
            continue
        if mm.op_type != "MatMul" or mm.input[1] not in inits or len(inits[mm.input[1]].dims) != 3:
            continue
        users = _users(model, mm.output[0])
        if len(users) == 1 and users[0].op_type == "Mul" and mm.input[0] in users[0].input:
            return mm
    return None


def int8_quadratic_form(model, mm, d_range, weight_max=127):
    """diff @ inv_cov with the left factor uint8 (per tensor) and the inverse covariances int8
    (per position and column, symmetric): an int32 MatMulInteger, scaled back to FP32; the
    product with diff and the sum that finish the distance stay FP32."""
    inits = _inits(model)
    a = numpy_helper.to_array(inits[mm.input[1]]).astype(np.float64)                 # P x d x d
    col_scale = np.maximum(np.abs(a).max(axis=1, keepdims=True), 1e-30) / weight_max  # P x 1 x d
    aq = np.clip(np.round(a / col_scale), -weight_max, weight_max).astype(np.int8)
    d_scale, d_zp = _uint8_params(d_range)
    p = "cov_product/"
    names = {k: _add_init(model, p + k, v) for k, v in {
        "d_scale": np.array(d_scale, np.float32), "d_zero_point": np.array(d_zp, np.uint8),
        "inv_cov_q": aq, "out_scale": (col_scale * d_scale).astype(np.float32)}.items()}
    nodes = [
        helper.make_node("QuantizeLinear", [mm.input[0], names["d_scale"], names["d_zero_point"]], [p + "diff_q"],
                         name=p + "quantize"),
        helper.make_node("MatMulInteger", [p + "diff_q", names["inv_cov_q"], names["d_zero_point"]], [p + "int32"],
                         name=p + "product"),
        helper.make_node("Cast", [p + "int32"], [p + "float"], name=p + "cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [p + "float", names["out_scale"]], [mm.output[0]], name=p + "scale"),
    ]
    _replace(model, [mm], nodes)


# name -> (find(model, scope) -> match or None, the tensor to calibrate of a match,
#          rewrite(model, match, value range, weight max), what it does)
HEAD_REWRITES = {
    "bank_product": (find_bank_product, lambda m: m[0].input[0], int8_bank_product,
                     "features x constant bank in int8 (MatMulIntegerToFloat); minimum, norms in FP32"),
    "quadratic_form": (find_quadratic_form, lambda m: m.input[0], int8_quadratic_form,
                       "differences x constant matrices in int8 (MatMulInteger); the rest in FP32"),
}


def check_rewrites(rewrites):
    """The registered rewrites [{rewrite, scope}] checked: a one-line error names an unknown one."""
    out = []
    for r in rewrites or ():
        name, scope = (r.get("rewrite"), r.get("scope", "")) if isinstance(r, dict) else (None, None)
        if name not in HEAD_REWRITES or not isinstance(scope, str):
            raise EdgeError(f"unknown int8 head rewrite {r!r} (known: {', '.join(HEAD_REWRITES)})",
                            "precision_hints.int8_onnxruntime")
        out.append((name, scope))
    return out


def tensor_range(model, tensor, images):
    """(min, max) of an intermediate FP32 tensor over calibration images."""
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    lo, hi = np.inf, -np.inf
    for i in range(len(images)):
        v = sess.run([tensor], {model.graph.input[0].name: images[i:i + 1]})[0]
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    return lo, hi


def prune(model):
    """Drop nodes whose outputs nobody reads and initializers no node reads."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {t for n in model.graph.node for t in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {t for n in model.graph.node for t in n.input}
    for i in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(i)
    names = {i.name for i in model.graph.initializer} | {n.output[k] for n in model.graph.node for k in range(len(n.output))}
    for vi in [v for v in model.graph.value_info if v.name not in names]:
        model.graph.value_info.remove(vi)


def feature_taps(model, backbone_nodes):
    """Names of the backbone nodes whose outputs the head reads (the residual adds that end
    the tapped stages). They are not quantized for the head's sake: the last one (the
    stride-16 features, after which nothing is quantized) stays FP32; the earlier ones are
    also the next block's input and keep the quantization that block needs. Measured on the
    24 PIPED bundles: image AUROC identical or closer to FP32's (largest drop 0.0104 ->
    0.0091), score differences equal or smaller, speed within noise (docs/precision.md)."""
    outside = {t for n in model.graph.node if n.name not in backbone_nodes for t in n.input}
    return {n.name for n in model.graph.node if n.name in backbone_nodes and any(o in outside for o in n.output)}


def convert_int8_ort(model, backbone_nodes, images, method="minmax", weight_bits=None, rewrites=None):
    """Pre-processed FP32 ModelProto -> (QDQ ModelProto for ONNX Runtime, details). `rewrites`:
    the head rewrites the method registered ([{rewrite, scope}], see HEAD_REWRITES); each is
    applied where its pattern is found in its scope."""
    from .int8 import backbone_targets, quantize_qdq

    src = onnx.ModelProto()
    src.CopyFrom(model)
    found = []
    for name, scope in check_rewrites(rewrites):
        find, tensor, _rewrite, _what = HEAD_REWRITES[name]
        match = find(src, scope)
        if match is not None:
            found.append((name, scope, tensor_range(src, tensor(match), images)))
    taps = feature_taps(src, backbone_nodes)
    stem = fold_normalisation(src)
    prune(src)                                        # the stem's unfolded weights
    targets = backbone_targets(src, backbone_nodes, ("Conv", "Clip"), skip=taps)
    weight_bits = weight_bits or WEIGHT_BITS
    out = quantize_qdq(src, images, targets, ("Conv", "Add", "Clip"), "uint8", method,
                       {"ActivationSymmetric": False}, reduce_range=weight_bits == 7)
    wmax = WEIGHT_MAX[weight_bits]
    if stem is not None:
        frames_as_quantized_input(out, stem)
    for name, scope, value_range in found:
        find, _t, rewrite, _what = HEAD_REWRITES[name]
        rewrite(out, find(out, scope), value_range, wmax)
    prune(out)
    onnx.checker.check_model(out)
    ops = [n.op_type for n in out.graph.node]
    details = {"format": "QDQ (ONNX Runtime form)",
               "weights": f"int8 symmetric per-channel, {weight_bits}-bit range (-{wmax}..{wmax})",
               "activations": "uint8 asymmetric per-tensor", "bias": "float",
               "input": "uint8 frames, normalisation folded into the stem" if stem is not None else "normalised in FP32",
               "head": "; ".join(f"{n} in {sc}: {HEAD_REWRITES[n][3]}" for n, sc, _r in found) or "FP32",
               "fp32_feature_taps": sorted(taps), "qlinear_convs_expected": ops.count("Conv"), "calibration": {"method": method, "images": int(len(images))}}
    return out, details
