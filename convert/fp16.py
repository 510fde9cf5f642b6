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
    _check_fp16(out, head_nodes)
    return out


def _check_fp16(model, head_nodes):
    """The converter must have produced FP16 weights and left every head initialiser FP32."""
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
