"""FP16 variant: a mixed-precision graph with the backbone in FP16 and the rest in FP32.

The backbone (cast and normalisation, mirrored border, EfficientNet trunk) runs in FP16;
the feature crop/resize/concat, the method's head (memory-bank distances, inverse-covariance
products), the map's upsampling and Gaussian blur and the score stay in FP32, with a Cast at
the boundary. Inputs and outputs keep their types (uint8 frames in, float32 map and score out).

The conversion uses onnxruntime's own converter (`onnxruntime.transformers.float16`) with
`keep_io_types` and a node block list: onnxconverter-common's converter produced invalid
graphs for this pattern (a graph output that another node also reads: map -> score).
"""

import onnx
from onnx import TensorProto


def convert_fp16(model, head_nodes):
    """FP32 ModelProto (pre-processed) -> FP16 ModelProto with `head_nodes` (names) kept in FP32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # The default block list keeps ops without (good) FP16 kernels in FP32 (Resize, TopK, ...);
    # the head's node names are added on top of it.
    out = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST),
        node_block_list=sorted(head_nodes), disable_shape_infer=False)
    # The converter appends its boundary casts at the end of the node list.
    from onnxruntime.transformers.onnx_model import OnnxModel
    OnnxModel.graph_topological_sort(out.graph, is_deterministic=True)
    out = drop_round_trips(out)
    _check_fp16(out)
    return out


def _to(node):
    return next((a.i for a in node.attribute if a.name == "to"), None)


def drop_round_trips(model):
    """Remove the FP32 -> FP16 -> FP32 cast pairs the converter puts between two blocked nodes
    (it casts every blocked node's output to FP16 and back for the next one): they would round
    every intermediate of the FP32 head (squared distances, covariance products) to FP16.
    Then remove casts to the type their input already has."""
    g = model.graph
    outputs = {o.name for o in g.output}
    cons = {}
    for n in g.node:
        for t in n.input:
            cons.setdefault(t, []).append(n)
    dead = set()
    for c1 in g.node:
        if c1.op_type != "Cast" or _to(c1) != TensorProto.FLOAT16 or c1.output[0] in outputs:
            continue
        users = cons.get(c1.output[0], [])
        if users and all(u.op_type == "Cast" and _to(u) == TensorProto.FLOAT for u in users):
            for c2 in users:
                c2.input[0] = c1.input[0]          # now a cast of the FP32 original
            dead.add(id(c1))
    keep = [n for n in g.node if id(n) not in dead]
    del g.node[:]
    g.node.extend(keep)
    # Types afresh, then drop the casts that are now FP32 -> FP32.
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input)}
    types.update({i.name: i.data_type for i in g.initializer})
    rename = {}
    keep = []
    for n in g.node:
        for k, t in enumerate(n.input):
            n.input[k] = rename.get(t, t)
        if (n.op_type == "Cast" and types.get(n.input[0]) == _to(n) and n.output[0] not in outputs):
            rename[n.output[0]] = n.input[0]
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return model


def _check_fp16(model):
    """The converter must have produced FP16 weights, and a graph the ONNX checker accepts.
    (That the head stays FP32 is checked by tests/test_quantize.py.)"""
    n16 = sum(1 for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16)
    if n16 == 0:
        raise RuntimeError("FP16 conversion left no FP16 weights in the graph")
    onnx.checker.check_model(model)


def fp16_summary(model, head_nodes):
    """Counts for the manifest: nodes in FP16, nodes kept in FP32, boundary casts."""
    casts = [n for n in model.graph.node if n.op_type == "Cast"
             and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)]
    back = [n for n in model.graph.node if n.op_type == "Cast"
            and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)]
    return {"fp32_nodes": len(head_nodes), "casts_to_fp16": len(casts), "casts_to_fp32": len(back),
            "fp16_initializers": sum(1 for i in model.graph.initializer
                                     if i.data_type == TensorProto.FLOAT16)}
