"""Static check of an exported graph against the toolkit's interface and TensorRT's parser.

    problems = check_graph("bundle/model.onnx")     # [] when the graph is fine; never raises
    python -m convert.graphcheck bundle/model.onnx  # prints problems and a size summary

What it checks:
  * interface: one input `frames` uint8 N x H x W x 3, outputs `anomaly_map` float32 N x H x W
    and `score` float32 N; only the batch dimension may be dynamic, H and W fixed and matching;
  * every op of the default domain is parsed by the TensorRT version checked for (default
    10.3, what JetPack 6.1 and 6.2 ship), and none is data-dependent control flow or has a
    data-dependent output shape;
  * the default-domain opset is within what that TensorRT parses;
  * initializers: count and bytes (a protobuf over 2 GiB cannot be one file).

It also gives the oldest TensorRT that parses the graph (`min_tensorrt`), which the bundle's
manifest records per graph (graphs.<precision>.min_tensorrt) so that `edge build` on an older
TensorRT refuses at once, naming the ops.

The op list is written from onnx-tensorrt's docs/operators.md for TensorRT 10 (the "Y" rows),
and the release each later op arrived in from onnx-tensorrt's changelog. TensorRT's own parser
stays the authority: `edge build BUNDLE --check` parses and builds the graph with the TensorRT
(or TensorRT-RTX) found here without needing a GPU.
"""

import argparse
import os
import sys
from collections import defaultdict

# The TensorRT a graph is checked for by default: JetPack 6.1 and 6.2 ship 10.3, the oldest
# the toolkit supports (deploy/jetpack.py).
DEFAULT_TENSORRT = "10.3"

# Default-domain opsets TensorRT's parser accepts, by the release that raised the ceiling:
# 10.0 documents 9 to 20, 10.9 goes to 22, 10.13 to 24.
MIN_OPSET = 9
OPSET_CEILING = (((10, 0), 20), ((10, 9), 22), ((10, 13), 24))
MAX_OPSET = 20          # the ceiling for DEFAULT_TENSORRT

# Ops of the list below that TensorRT 10.0 did not parse yet: the release that added each
# (onnx-tensorrt's changelog). JetPack 6's 10.3 parses none of those after 10.1.
OP_SINCE = {
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4), "HammingWindow": (10, 4), "HannWindow": (10, 4),
    "STFT": (10, 5),
    "Attention": (10, 14),
    "RotaryEmbedding": (10, 15), "RMSNormalization": (10, 15), "TensorScatter": (10, 15),
}

# ONNX operators that some TensorRT 10 parser imports ("Y" in onnx-tensorrt's operators.md);
# OP_SINCE says which arrived after 10.0.
TRT10_SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose
Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp
Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish
Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round STFT
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size
Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split()) | frozenset(OP_SINCE)


def version_tuple(version):
    """'10.3.0.30' -> (10, 3); None for None."""
    if version is None:
        return None
    if isinstance(version, (tuple, list)):
        return tuple(int(x) for x in version[:2])
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(f"not a TensorRT version: {version!r}") from None


def version_text(v):
    return f"{v[0]}.{v[1]}"


def opset_ceiling(trt):
    """The highest default-domain opset the TensorRT version `trt` (a tuple) parses."""
    ceiling = OPSET_CEILING[0][1]
    for since, top in OPSET_CEILING:
        if trt >= since:
            ceiling = top
    return ceiling


def opset_needs(opset):
    """The oldest TensorRT release whose parser takes this opset (None: none known does)."""
    for since, top in OPSET_CEILING:
        if opset <= top:
            return since
    return None

# Control flow and ops whose output shape depends on the data: TensorRT may parse some of
# them, but they defeat static shapes, profiles and DLA, and the runtime does not handle them.
DATA_DEPENDENT = frozenset("""
Loop If Scan NonZero Unique Compress NonMaxSuppression SequenceAt SequenceConstruct
SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap SplitToSequence
ConcatFromSequence Optional OptionalGetElement OptionalHasElement
""".split())

ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2,
              17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1}


def _dims(value_info):
    """[int or str or None] per dimension, or None when the rank is unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _static(d):
    return isinstance(d, int) and d > 0


def _walk_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.HasField("g"):
                yield from _walk_nodes(attr.g)
            for g in attr.graphs:
                yield from _walk_nodes(g)


def _names(nodes, limit=3):
    shown = ", ".join(n or "<unnamed>" for n in nodes[:limit])
    more = f" and {len(nodes) - limit} more" if len(nodes) > limit else ""
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {shown}{more}"


def _check_interface(graph, problems):
    from onnx import TensorProto

    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    by_name = {i.name: i for i in inputs}
    hw = None
    if [i.name for i in inputs] != ["frames"]:
        problems.append(f"inputs are {[i.name for i in inputs]}; the interface has one input 'frames'")
    if "frames" in by_name:
        vi = by_name["frames"]
        if vi.type.tensor_type.elem_type != TensorProto.UINT8:
            problems.append(f"input 'frames' is {TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}"
                            ", not UINT8")
        dims = _dims(vi)
        if dims is None or len(dims) != 4:
            problems.append(f"input 'frames' has shape {dims}; expected [batch, H, W, 3]")
        else:
            bad = [f"dim {i} is {dims[i]!r}" for i in (1, 2, 3) if not _static(dims[i])]
            if bad:
                problems.append(f"input 'frames': only the batch dim may be dynamic ({', '.join(bad)})")
            elif dims[3] != 3:
                problems.append(f"input 'frames' has {dims[3]} channels; expected 3 (N x H x W x 3)")
            if _static(dims[1]) and _static(dims[2]):
                hw = (dims[1], dims[2])

    outputs = {o.name: o for o in graph.output}
    expected = {"anomaly_map": 3, "score": 1}
    for name, rank in expected.items():
        vi = outputs.get(name)
        if vi is None:
            problems.append(f"output '{name}' missing (outputs: {', '.join(outputs) or 'none'})")
            continue
        et = vi.type.tensor_type.elem_type
        if et != TensorProto.FLOAT:
            problems.append(f"output '{name}' is {TensorProto.DataType.Name(et)}, not FLOAT")
        dims = _dims(vi)
        if dims is None or len(dims) != rank:
            problems.append(f"output '{name}' has shape {dims}; expected rank {rank}")
            continue
        if name == "anomaly_map":
            bad = [f"dim {i} is {dims[i]!r}" for i in (1, 2) if not _static(dims[i])]
            if bad:
                problems.append(f"output 'anomaly_map': only the batch dim may be dynamic ({', '.join(bad)})")
            elif hw is not None and (dims[1], dims[2]) != hw:
                problems.append(f"output 'anomaly_map' is {dims[1]}x{dims[2]} but the input is "
                                f"{hw[0]}x{hw[1]} (maps are at input resolution)")
    for name in outputs:
        if name not in expected:
            problems.append(f"unexpected output '{name}' (the interface has anomaly_map and score)")


def inspect_graph(path, max_opset=None, min_opset=MIN_OPSET, tensorrt=DEFAULT_TENSORRT):
    """(problems, summary) for the graph checked against TensorRT version `tensorrt` (e.g.
    "10.3"; the opset ceiling follows from it unless max_opset is given). summary holds
    min_tensorrt, the oldest TensorRT that parses the graph, and min_tensorrt_ops, why.
    Never raises; an unreadable graph is a problem."""
    summary = {"path": path}
    trt = version_tuple(tensorrt or DEFAULT_TENSORRT)
    trt_name = version_text(trt)
    if max_opset is None:
        max_opset = opset_ceiling(trt)
    floor, floor_why = (10, 0), []
    try:
        import onnx
    except ImportError:
        return ["onnx is not installed (pip install onnx); cannot check the graph"], summary
    if not os.path.isfile(path):
        return [f"graph not found: {path}"], summary
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        return [f"cannot read graph: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"], summary
    problems = []
    graph = model.graph

    # opsets
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            summary["opset"] = imp.version
            if not min_opset <= imp.version <= max_opset:
                problems.append(f"opset {imp.version} is outside what TensorRT {trt_name} parses "
                                f"({min_opset}-{max_opset})")
            need = opset_needs(imp.version)
            if need is not None and need > floor:
                floor, floor_why = need, [f"opset {imp.version}"]
        elif imp.domain != "ai.onnx.ml" or any(n.domain == imp.domain for n in graph.node):
            problems.append(f"custom op domain '{imp.domain}' (TensorRT needs a plugin for it)")

    _check_interface(graph, problems)

    # operators
    unsupported, dynamic, late, custom = (defaultdict(list) for _ in range(4))
    n_nodes = 0
    for node in _walk_nodes(graph):
        n_nodes += 1
        if node.domain not in ("", "ai.onnx"):
            custom[f"{node.domain}::{node.op_type}"].append(node.name)
            continue
        since = OP_SINCE.get(node.op_type)
        if since is not None:
            if since > floor:
                floor, floor_why = since, []
            if since == floor and node.op_type not in floor_why:
                floor_why.append(node.op_type)
        if node.op_type in DATA_DEPENDENT:
            dynamic[node.op_type].append(node.name)
        elif node.op_type not in TRT10_SUPPORTED:
            unsupported[node.op_type].append(node.name)
        elif since is not None and since > trt:
            late[node.op_type].append(node.name)
    for op, names in sorted(dynamic.items()):
        problems.append(f"{op} is data-dependent control flow or shape; keep graphs static "
                        f"({_names(names)})")
    for op, names in sorted(unsupported.items()):
        problems.append(f"{op} is not supported by TensorRT's ONNX parser ({_names(names)})")
    for op, names in sorted(late.items()):
        problems.append(f"{op} is parsed only by TensorRT {version_text(OP_SINCE[op])}+, not by "
                        f"{trt_name} ({_names(names)})")
    for op, names in sorted(custom.items()):
        problems.append(f"{op} is a custom-domain op (TensorRT needs a plugin) ({_names(names)})")
    summary["min_tensorrt"] = version_text(floor)
    summary["min_tensorrt_ops"] = floor_why
    summary["nodes"] = n_nodes
    summary["ops"] = sorted({n.op_type for n in _walk_nodes(graph)})

    # initializers
    sizes = []
    for init in graph.initializer:
        count = 1
        for d in init.dims:
            count *= int(d)
        sizes.append((count * ELEM_BYTES.get(init.data_type, 4), init.name))
    sizes.sort(reverse=True)
    total = sum(s for s, _ in sizes)
    summary["initializers"] = len(sizes)
    summary["initializer_bytes"] = total
    summary["largest_initializers"] = [(n, s) for s, n in sizes[:3]]
    summary["external_data"] = any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in graph.initializer)
    if total >= 2 ** 31 and not summary["external_data"]:
        problems.append(f"initializers total {total / 2**30:.1f} GiB: over protobuf's 2 GiB limit "
                        "for one file; save with external data")
    return problems, summary


def check_graph(path, max_opset=None, min_opset=MIN_OPSET, tensorrt=DEFAULT_TENSORRT):
    """Problems with the graph at `path` for TensorRT `tensorrt`, as one-line strings; []
    when none. Never raises."""
    try:
        return inspect_graph(path, max_opset, min_opset, tensorrt)[0]
    except Exception as exc:  # a malformed graph must not crash the caller
        return [f"graph check failed: {type(exc).__name__}: {exc}"]


def tensorrt_floor(path):
    """{"min_tensorrt": "10.x", "min_tensorrt_ops": [...]} for the graph's manifest entry: the
    oldest TensorRT whose parser takes its ops and opset ({} when the graph cannot be read)."""
    try:
        _, summary = inspect_graph(path)
    except Exception:
        return {}
    if "min_tensorrt" not in summary:
        return {}
    out = {"min_tensorrt": summary["min_tensorrt"]}
    if summary["min_tensorrt_ops"]:
        out["min_tensorrt_ops"] = summary["min_tensorrt_ops"]
    return out


def _size(n):
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_summary(summary):
    largest = ", ".join(f"{n} {_size(s)}" for n, s in summary.get("largest_initializers", []))
    return (f"opset {summary.get('opset', '?')}, {summary.get('nodes', 0)} nodes, "
            f"{summary.get('initializers', 0)} initializers ({_size(summary.get('initializer_bytes', 0))}"
            f"{'; external data' if summary.get('external_data') else ''})"
            + (f"; largest: {largest}" if largest else "")
            + (f"; parses with TensorRT {summary['min_tensorrt']}+" if "min_tensorrt" in summary else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m convert.graphcheck", description=__doc__.split("\n")[0])
    ap.add_argument("graphs", nargs="+", help="ONNX files")
    ap.add_argument("--tensorrt", default=DEFAULT_TENSORRT, metavar="VERSION",
                    help=f"the TensorRT to check for (default {DEFAULT_TENSORRT}, JetPack 6.1/6.2)")
    ap.add_argument("--max-opset", type=int, help="override the opset ceiling of that TensorRT")
    args = ap.parse_args(argv)
    try:
        version_tuple(args.tensorrt)
    except ValueError as exc:
        ap.error(str(exc))
    bad = 0
    for path in args.graphs:
        try:
            problems, summary = inspect_graph(path, args.max_opset, tensorrt=args.tensorrt)
        except Exception as exc:
            problems, summary = [f"graph check failed: {exc}"], {}
        print(f"{path}: {format_summary(summary)}")
        for p in problems:
            print(f"  problem: {p}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
