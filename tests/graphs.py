"""Small ONNX graphs with the toolkit's graph interface, built with onnx's helper API (no torch).

Interface (every method exports it): input `frames` uint8 N x H x W x 3 (RGB, dynamic batch
dim 'batch'), outputs `anomaly_map` float32 N x H x W and `score` float32 N.

The graph is a toy PatchCore: normalise, one strided conv as the "backbone", squared distance
to the nearest row of a constant memory bank, bilinear upsampling to input size, max as score.

    make_graph(path, precision="fp32")   # "fp16": casts inside, fp32 at the edges
                                          # "int8": Q/DQ pairs around the conv
    make_bad_graph(path, kind)           # for graphcheck: "nonzero", "dynamic_hw", ...
    make_bundle(folder, precisions=("fp32",))
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CH = 8          # feature channels
BANK = 16       # memory-bank rows


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.5, size=(CH, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, size=(CH,)).astype(np.float32)
    bank = rng.normal(0, 1.0, size=(BANK, CH)).astype(np.float32)
    return conv_w, conv_b, bank


def _io(h, w, batch="batch", in_type=TensorProto.UINT8):
    frames = helper.make_tensor_value_info("frames", in_type, [batch, h, w, 3])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [batch, h, w])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch])
    return frames, amap, score


def build_model(h=32, w=32, precision="fp32", seed=0, batch="batch"):
    """Return an onnx.ModelProto with the graph interface. h and w must be even."""
    assert h % 2 == 0 and w % 2 == 0
    conv_w, conv_b, bank = _weights(seed)
    npt = np.float16 if precision == "fp16" else np.float32
    hh, ww = h // 2, w // 2
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, outs, **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=f"{op.lower()}_{len(nodes)}", **attrs))
        return outs[0]

    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
    x = node("Cast", ["frames"], ["x_f32"], to=TensorProto.FLOAT)
    x = node("Sub", [x, const("mean", mean)], ["x_centred"])
    x = node("Div", [x, const("std", std)], ["x_norm"])
    if precision == "fp16":
        x = node("Cast", [x], ["x_f16"], to=TensorProto.FLOAT16)
    x = node("Transpose", [x], ["x_nchw"], perm=[0, 3, 1, 2])

    if precision == "int8":
        # Activation Q/DQ (per-tensor) and weight DQ (per-channel, int8 initializer).
        x = node("QuantizeLinear", [x, const("x_scale", np.float32(4.0 / 127)),
                                    const("x_zp", np.int8(0))], ["x_q"])
        x = node("DequantizeLinear", [x, "x_scale", "x_zp"], ["x_dq"])
        w_scale = (np.abs(conv_w).reshape(CH, -1).max(axis=1) / 127.0).astype(np.float32)
        w_q = np.clip(np.round(conv_w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
        wname = node("DequantizeLinear", [const("conv_w_q", w_q), const("conv_w_scale", w_scale),
                                          const("conv_w_zp", np.zeros(CH, np.int8))],
                     ["conv_w"], axis=0)
    else:
        wname = const("conv_w", conv_w.astype(npt))
    f = node("Conv", [x, wname, const("conv_b", conv_b.astype(npt))], ["feat"],
             kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    f = node("Relu", [f], ["feat_relu"])
    f = node("Transpose", [f], ["feat_nhwc"], perm=[0, 2, 3, 1])
    f = node("Reshape", [f, const("flat_shape", np.array([-1, CH], np.int64))], ["patches"])
    # squared distance to each bank row: |f|^2 - 2 f.m + |m|^2
    ff = node("Mul", [f, f], ["f_sq"])
    ff = node("ReduceSum", [ff, const("axes1", np.array([1], np.int64))], ["f_norm"], keepdims=1)
    fm = node("MatMul", [f, const("bank_t", bank.T.copy().astype(npt))], ["f_dot_m"])
    fm = node("Mul", [fm, const("minus2", np.array(-2, npt))], ["f_dot_m2"])
    d = node("Add", [ff, fm], ["d_part"])
    d = node("Add", [d, const("bank_norm", (bank ** 2).sum(1).astype(npt))], ["d_all"])
    d = node("ReduceMin", [d], ["d_min"], axes=[1], keepdims=0)
    d = node("Relu", [d], ["d_pos"])       # rounding can make tiny negatives
    d = node("Reshape", [d, const("grid_shape", np.array([-1, 1, hh, ww], np.int64))], ["d_grid"])
    d = node("Resize", [d, "", const("scales", np.array([1, 1, 2, 2], np.float32))], ["d_up"],
             mode="linear", coordinate_transformation_mode="half_pixel")
    d = node("Reshape", [d, const("map_shape", np.array([-1, h, w], np.int64))],
             ["map_native"])
    if precision == "fp16":
        d = node("Cast", [d], ["anomaly_map"], to=TensorProto.FLOAT)
    else:
        nodes[-1].output[0] = "anomaly_map"
    node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0)

    frames, amap, score = _io(h, w, batch)
    graph = helper.make_graph(nodes, f"toy_patchcore_{precision}", [frames], [amap, score], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tests.graphs")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_graph(path, h=32, w=32, precision="fp32", seed=0, batch="batch"):
    onnx.save(build_model(h, w, precision, seed, batch), path)
    return path


BAD_KINDS = ("nonzero", "dynamic_hw", "float_input", "wrong_output", "loop", "unsupported_op",
             "old_opset")


def build_bad_model(kind, h=32, w=32):
    """A graph that breaks one rule that graphcheck looks for."""
    model = build_model(h, w)
    g = model.graph
    if kind == "nonzero":
        # a data-dependent op hanging off the map (its output is a graph output)
        g.node.append(helper.make_node("NonZero", ["anomaly_map"], ["hot_pixels"], name="nonzero_x"))
        g.output.append(helper.make_tensor_value_info("hot_pixels", TensorProto.INT64, [3, "n"]))
    elif kind == "dynamic_hw":
        g.input[0].type.tensor_type.shape.dim[1].dim_param = "height"
        g.output[0].type.tensor_type.shape.dim[2].dim_param = "width"
    elif kind == "float_input":
        g.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
        g.node[0].attribute[0].i = TensorProto.FLOAT
    elif kind == "wrong_output":
        g.output[1].name = "scores"
        for n in g.node:
            if n.op_type == "ReduceMax":
                n.output[0] = "scores"
    elif kind == "loop":
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])])
        g.initializer.extend([numpy_helper.from_array(np.array(2, np.int64), "trip"),
                              numpy_helper.from_array(np.array(True), "cond")])
        g.node.append(helper.make_node("Loop", ["trip", "cond"], [], name="loop_x", body=body))
    elif kind == "unsupported_op":
        g.node.append(helper.make_node("MatMulInteger", ["a8", "b8"], ["c32"], name="mmi_x"))
        g.initializer.extend([numpy_helper.from_array(np.ones((2, 2), np.int8), "a8"),
                              numpy_helper.from_array(np.ones((2, 2), np.int8), "b8")])
        g.output.append(helper.make_tensor_value_info("c32", TensorProto.INT32, [2, 2]))
    elif kind == "old_opset":
        model.opset_import[0].version = 7
    else:
        raise ValueError(kind)
    return model


def make_bad_graph(path, kind, h=32, w=32):
    onnx.save(build_bad_model(kind, h, w), path)
    return path


def make_bundle(folder, precisions=("fp32",), h=32, w=32, seed=0):
    """A minimal valid bundle with the toy graph in the asked precisions."""
    from edge.bundle.manifest import GRAPH_FILES, write_manifest

    os.makedirs(folder, exist_ok=True)
    graphs = {}
    for p in precisions:
        make_graph(os.path.join(folder, GRAPH_FILES[p]), h, w, precision=p, seed=seed)
        graphs[p] = {"file": GRAPH_FILES[p]}
    manifest = {
        "method": "toy_patchcore",
        "input": {"height": h, "width": w, "layout": "NHWC", "colour": "RGB"},
        "threshold": {"value": 5.0},
        "graphs": graphs,
        "files": {g["file"]: None for g in graphs.values()},
    }
    write_manifest(folder, manifest)
    return folder


def random_frames(n, h=32, w=32, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
