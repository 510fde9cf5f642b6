"""`edge quantize`: add an FP16 or INT8 variant of a bundle's graph, checked against FP32.

    edge quantize BUNDLE --precision fp16|int8 [--calib-images N] [--calib-data ROOT]
                         [--calib-method minmax|entropy|percentile] [--eval-data ROOT]
                         [--max-drop X] [--max-changed F] [--force] [--no-trt-check]

Precision lives in the graph, as TensorRT 10/11 want it (strongly typed networks; no builder
FP16/INT8 flags, no calibrators): FP16 casts (convert/fp16.py) or INT8 Q/DQ pairs
(convert/int8.py). Which nodes change precision is the method's to say: the bundle's
`precision_hints` (written by training from the method's precision_hints()) name module
scopes of the exported graph ("/scorer/features/") that may run in FP16 or INT8, and scopes
that must stay FP32; every other node (normalisation, the method's head, map upsampling and
smoothing, the score) stays FP32. Nothing here knows one method from another. Inputs and
outputs keep their types.

Steps, atomic for the bundle:
  1. pre-process the FP32 graph (onnxruntime's quant_pre_process: shape inference, constant
     folding) and split it by the method's precision hints (split_graph below);
  2. convert, and write the variant under a temporary name in the bundle folder;
  3. check it: convert.graphcheck, and a TensorRT (or TensorRT-RTX) parse-and-build;
  4. evaluate it and FP32 under ONNX Runtime on the same images: the test split of the
     bundle's training data set (or --eval-data) for image AUROC of both, plus the largest
     score and map differences; without a test split, held-out good images (differences only).
     INT8 for TensorRT runs with its Q/DQ simulated in float (convert.qdq_float: what
     TensorRT computes, whatever this CPU's integer kernels do); INT8 for ONNX Runtime with
     this CPU's integer kernels, checked against that simulation;
  5. refuse it (EdgeError, exit 2, bundle unchanged) when it fails a check or is over the
     budget (`budget`: 0.01 image AUROC, 5 % changed verdicts, integer kernels within 3 % of
     the threshold of the float simulation), unless --force;
  6. rename it to model.fp16.onnx / model.int8.onnx and record it in the manifest: `graphs`
     (file, details, accuracy, and its own threshold: the bundle's rule applied to the
     variant's scores on the same held-out good images) and `files` (sha256).
"""

import os
import tempfile
import time

import numpy as np

from edge.bundle import reference
from edge.bundle.manifest import ENGINE_GRAPH_FILES, GRAPH_FILES, Bundle
from edge.common.errors import EdgeError
from edge.runtime.preprocess import Preprocessor
from edge.common.progress import say

from edge.common.names import VARIANT_PRECISIONS as PRECISIONS
HEAD_ENTRY_OPS = ("MatMul", "Gemm", "Einsum")
# Element-wise ops that finish a backbone layer (a conv's activation, a residual add) and
# belong to it when all their inputs come from the backbone.
LAYER_ENDS = ("Clip", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Add", "Mul")
DEFAULT_CALIB_IMAGES = 32


# ---- graph ----------------------------------------------------------------------------
def preprocess_graph(src_path):
    """The FP32 graph after constant folding and shape inference (a ModelProto).

    ONNX Runtime's basic optimisations fold the shape arithmetic of the export into constants,
    without its transpose optimiser (it would move the NHWC->NCHW Transpose ahead of the
    uint8->float Cast, and TensorRT transposes no uint8); then onnxruntime's quant_pre_process
    runs (symbolic) shape inference."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edge-pre-") as tmp:
        folded, dst = os.path.join(tmp, "folded.onnx"), os.path.join(tmp, "pre.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = folded
        so.log_severity_level = 3
        ort.InferenceSession(src_path, so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["TransposeOptimizer"])
        model = onnx.load(folded)
        if cast_before_transpose(model) | bool(fold_pads(model)):
            onnx.save(model, folded)
        quant_pre_process(folded, dst, skip_optimization=True, skip_symbolic_shape=False)
        model = onnx.load(dst)
    for i, node in enumerate(model.graph.node):       # both converters select nodes by name
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return drop_unused_opsets(model)


def cast_before_transpose(model):
    """Frames -> Transpose -> Cast(float) becomes frames -> Cast -> Transpose: TensorRT's
    parser transposes no uint8 tensor ("first input has type UInt8"). Returns True if changed."""
    import onnx
    from onnx import TensorProto

    uint8_inputs = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == TensorProto.UINT8}
    nodes = list(model.graph.node)
    changed = False
    for t in nodes:
        if t.op_type != "Transpose" or t.input[0] not in uint8_inputs:
            continue
        users = [n for n in nodes if t.output[0] in n.input]
        if len(users) != 1 or users[0].op_type != "Cast":
            continue
        c = users[0]
        mid, out = t.output[0], c.output[0]
        c.input[0], c.output[0] = t.input[0], mid      # Cast(frames) -> mid (float, NHWC)
        t.input[0], t.output[0] = mid, out             # Transpose(mid) -> out (float, NCHW)
        ti, ci = nodes.index(t), nodes.index(c)
        tc, cc = onnx.NodeProto(), onnx.NodeProto()
        tc.CopyFrom(t)
        cc.CopyFrom(c)
        model.graph.node[ti].CopyFrom(cc)              # the Cast now comes first
        model.graph.node[ci].CopyFrom(tc)
        for vi in [v for v in model.graph.value_info if v.name == mid]:
            model.graph.value_info.remove(vi)
        changed = True
    return changed


def fold_pads(model):
    """Zero-padding Pad nodes feeding only a Conv (the backbone's TensorFlow-style "same"
    padding) become the Conv's own pads: one op fewer per layer, and under Q/DQ the padding
    is not done in FP32 between the pairs. Returns how many were folded."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    folded = 0
    for pad in nodes:
        if pad.op_type != "Pad" or len(pad.input) < 2 or pad.input[1] not in inits:
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        if mode != b"constant" or (len(pad.input) > 2 and pad.input[2]
                                   and (pad.input[2] not in inits
                                        or numpy_helper.to_array(inits[pad.input[2]]).any())):
            continue
        if len(pad.input) > 3 and pad.input[3]:          # axes: keep it simple
            continue
        users = [n for n in nodes if pad.output[0] in n.input]
        if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != pad.output[0]:
            continue
        conv = users[0]
        amounts = numpy_helper.to_array(inits[pad.input[1]]).astype(int).tolist()
        if len(amounts) != 8 or any(amounts[i] for i in (0, 1, 4, 5)) or min(amounts) < 0:
            continue
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        new = [old[0] + amounts[2], old[1] + amounts[3], old[2] + amounts[6], old[3] + amounts[7]]
        if "pads" in attrs:
            conv.attribute.remove(attrs["pads"])
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        model.graph.node.remove(pad)
        folded += 1
    return folded


def drop_unused_opsets(model):
    """Remove opset imports of domains no node uses (quant_pre_process adds ORT's own domains,
    which TensorRT's parser and graphcheck take for custom ops)."""
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def split_graph(model, hints=None, precision="fp16"):
    """(reduced, fp32): node names that change precision and those that stay FP32.

    `hints` (the manifest's precision_hints: {"fp16": [scopes], "int8": [scopes], "fp32":
    [scopes]}, each scope a prefix of node names such as "/scorer/features/"): a node changes
    precision when its name begins with a scope hinted for `precision` and with no "fp32"
    scope. Without hints (a bundle trained before methods gave them), the split by position
    of split_by_position."""
    if hints is None:
        return split_by_position(model)
    allow, keep = tuple(hints.get(precision) or ()), tuple(hints.get("fp32") or ())
    reduced, fp32 = [], []
    for n in model.graph.node:
        (reduced if n.name.startswith(allow) and not (keep and n.name.startswith(keep)) else fp32).append(n.name)
    if not allow or not any(n.op_type == "Conv" for n in model.graph.node if n.name in set(reduced)):
        raise EdgeError(f"the method's precision hints allow no convolution in {precision} "
                        f"(hinted scopes: {', '.join(allow) or 'none'}); no {precision} variant to make")
    return reduced, fp32


def split_by_position(model):
    """(backbone, head) by position, for bundles without precision hints.

    The head begins at the first MatMul/Gemm/Einsum. The backbone is every node that feeds a
    convolution which feeds that head entry (cast, normalisation, border, the trunk), plus the
    activations and residual adds that finish the trunk's last layers. Everything else stays
    FP32."""
    nodes = list(model.graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    entry = next((i for i, n in enumerate(nodes) if n.op_type in HEAD_ENTRY_OPS), None)
    if entry is None:
        raise EdgeError("cannot find the method's head in the graph (no MatMul/Gemm/Einsum) and the bundle "
                        "gives no precision hints (train it again)")

    def ancestors(starts):
        seen, stack = set(), list(starts)
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(producer[t] for t in nodes[i].input if t in producer)
        return seen

    trunk_convs = [i for i in ancestors([entry]) if nodes[i].op_type == "Conv"]
    if not trunk_convs:
        raise EdgeError("cannot find the backbone in the graph (no Conv feeds the head)")
    backbone = ancestors(trunk_convs)
    inits = {t.name for t in model.graph.initializer}
    for i, n in enumerate(nodes):                     # topological order: chains of layer ends
        if (i not in backbone and n.op_type in LAYER_ENDS and n.input and producer.get(n.input[0]) in backbone
                and all(t in inits or t == "" or producer.get(t) in backbone for t in n.input)):
            backbone.add(i)
    head = [n.name for i, n in enumerate(nodes) if i not in backbone]
    return [nodes[i].name for i in sorted(backbone)], head


# ---- data -----------------------------------------------------------------------------
def _data_root(bundle, override=None):
    root = override or (bundle.manifest.get("training") or {}).get("data")
    if not root:
        raise EdgeError("the manifest names no training data (training.data); pass --calib-data/--eval-data")
    if not os.path.isdir(root):
        raise EdgeError("data folder not found (pass --calib-data/--eval-data)", root)
    return root


def calibration_images(bundle, root=None, count=DEFAULT_CALIB_IMAGES):
    """Good images (N x H x W x 3 uint8) through the bundle's preprocessing: ROOT/train/good of
    the bundle's training data (or `root`, a data set root or a folder of images), evenly spaced."""
    from edge.common.imageio import list_images
    from train.data import MvtecSet, load_images

    root = _data_root(bundle, root)
    if os.path.isdir(os.path.join(root, "train", "good")):
        paths = MvtecSet(root).train_good()
    else:
        paths = list_images(root)
    if not paths:
        raise EdgeError("no calibration images found", root)
    if count and len(paths) > count:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]
    return load_images(paths, Preprocessor.for_bundle(bundle))


def evaluation_set(bundle, root=None, with_newness=False):
    """(images, labels or None, masks or None, description). The test split when the data set
    has one; else its validation/good or train/good images (good only: no AUROC).
    `with_newness`: a fifth item, whether the images are new to the model (all but the bundle's
    own training images)."""
    from train.data import MvtecSet, load_images, load_test

    root = _data_root(bundle, root)
    ds, pre = MvtecSet(root), Preprocessor.for_bundle(bundle)
    name = os.path.basename(os.path.abspath(root))
    if os.path.isdir(os.path.join(root, "test")):
        samples = ds.test()
        images, masks = load_test(samples, pre)
        out = images, np.array([s.label for s in samples]), masks, f"{name}/test", True
    else:
        val = ds.validation_good()
        trained_on = (bundle.manifest.get("training") or {}).get("data")
        own = not val and bool(trained_on) and os.path.realpath(trained_on) == os.path.realpath(root)
        out = (load_images(val or ds.train_good(), pre), None, None,
               f"{name} {'validation' if val else 'training'} good images (no test split)", not own)
    return out if with_newness else out[:4]


SHIFT_IMAGES = 16                # images nearest the threshold the variant's shift is measured on


def variant_threshold(bundle, ref_scores, scores, where, new_to_model, count=SHIFT_IMAGES):
    """The bundle's operating point carried over to a variant (edge.common.oppoint.carried_over):
    its threshold moved by the median score difference of the variant from FP32 on the `count`
    evaluation images whose FP32 scores lie nearest the threshold.

    Only images new to the model can measure it. A quantized backbone moves every feature a
    little; a distance to what the model was fitted on (Mahalanobis, nearest neighbour) grows
    by the whole of that move for an image the model was fitted on (its distance is near zero)
    but by much less for an image already some way off, such as a good part the model never saw
    at the threshold (the two add roughly in quadrature). On the model's own training images the
    shift is therefore an upper bound, and a large one: PaDiM at 128 x 128, +160 there on a
    threshold of 348 against +2 to +14 for test images near the threshold. The test split
    (labels unused) or validation/good are new to the model; where the evaluation images are the
    model's own training images (no test split, no validation/good), no shift is applied and the
    rule says why."""
    from edge.common import oppoint

    entry = bundle.manifest["threshold"]
    thr = float(entry["value"])
    ref = np.asarray(ref_scores, np.float64)
    diff = np.asarray(scores, np.float64) - ref
    if not new_to_model:
        how = (f"no image new to the model: {where} are the images it was fitted on, whose scores sit below "
               f"any new image's and move most (median {float(np.median(diff)):+.4g} there); FP32's threshold kept")
        return oppoint.carried_over(entry, 0.0, how)
    near = np.argsort(np.abs(ref - thr), kind="stable")[:count]
    lo, hi = ref[near].min() / thr, ref[near].max() / thr
    how = (f"the {near.size} of {ref.size} images of {where} (new to the model, labels unused) whose FP32 "
           f"scores lie nearest the threshold ({lo:.2f}-{hi:.2f} x)")
    return oppoint.carried_over(entry, float(np.median(diff[near])), how)


def compare(bundle, variant_path, images, labels=None, masks=None, batch=8, threads=None, ref=None,
            own=None, float_path=None):
    """FP32 and the variant under ONNX Runtime on the same images: AUROC of both (with labels),
    the largest score and map differences, decisions changed at the bundle's threshold (and at
    the variant's own threshold: `own(fp32_scores, variant_scores)` gives it). `ref`: FP32
    (maps, scores) already computed. `float_path`: the variant's Q/DQ simulated in float
    (convert.qdq_float); its largest score difference from the variant as ONNX Runtime runs it
    on this CPU is recorded too. Returns (accuracy, ref, own threshold entry or None)."""
    from edge.engines.onnxrt import OrtEngine
    from edge.common import metrics
    from train.evaluate import run_engine

    if ref is None:
        eng = OrtEngine(bundle.graph_path("fp32"), threads=threads)
        ref = run_engine(eng, images, batch)[:2]
    eng = OrtEngine(variant_path, threads=threads)
    maps, scores, _ = run_engine(eng, images, batch)
    rmaps, rscores = ref
    thr = bundle.threshold
    own_entry = own(rscores, scores) if own is not None else None
    own_threshold = own_entry["value"] if own_entry else None
    res = {}
    if float_path is not None:
        fscores = run_engine(OrtEngine(float_path, threads=threads), images, batch)[1]
        res["integer_vs_float_max_rel"] = float(np.abs(scores - fscores).max() / max(abs(thr), 1e-12))
    res.update({"images": int(len(images)),
           "max_score_diff": float(np.abs(scores - rscores).max()),
           "max_score_diff_rel": float(np.abs(scores - rscores).max() / max(abs(thr), 1e-12)),
           "max_map_diff": float(np.abs(maps - rmaps).max()),
           "decisions_changed": int(((scores > thr) != (rscores > thr)).sum())})
    if own_threshold is not None:
        res["decisions_changed_own_threshold"] = int(((scores > own_threshold) != (rscores > thr)).sum())
    if labels is not None and labels.min() != labels.max():
        a32, a = metrics.auroc(labels, rscores), metrics.auroc(labels, scores)
        res.update(image_auroc_fp32=float(a32), image_auroc=float(a), auroc_drop=float(a32 - a))
        # Misclassified test images: FP32 at its threshold, the variant at FP32's and at its own.
        res.update(errors_fp32=int(((rscores > thr) != labels.astype(bool)).sum()),
                   errors_at_fp32_threshold=int(((scores > thr) != labels.astype(bool)).sum()))
        if own_threshold is not None:
            res["errors_at_own_threshold"] = int(((scores > own_threshold) != labels.astype(bool)).sum())
        if masks is not None and masks.any():
            p32, p = metrics.auroc(masks, rmaps), metrics.auroc(masks, maps)
            res.update(pixel_auroc_fp32=float(p32), pixel_auroc=float(p))
    return res, ref, own_entry


# ---- checks ---------------------------------------------------------------------------
def trt_check(graph_path, precision):
    """None when no TensorRT is installed, else a one-line description of the build; EdgeError
    when the parser or builder rejects the graph. Reuses convert.build (strongly typed)."""
    from convert import build as cb

    try:
        trt = cb.import_builder_trt(allow_rtx=True)
    except EdgeError:
        return None
    _plan, info = cb.serialize_plan(trt, graph_path, (1, 1, 1), precision, log=lambda *a, **k: None)
    return f"parses and builds with {info['builder']} (strongly typed: {info['strongly_typed']})"


# ---- the variant ----------------------------------------------------------------------
def make_variant(model, precision, calib_images=None, calib_method=None, threshold=None, log=None, hints=None):
    """(variant ModelProto, details dict) from a pre-processed FP32 ModelProto. INT8 with a
    `threshold` (the bundle's): the layers most sensitive to INT8 are kept in FP16
    (convert.int8_tune)."""
    backbone, head = split_graph(model, hints, precision)
    details = {"backbone_nodes": len(backbone), "fp32_nodes": len(head),
               "placement": "the method's precision hints: " + ", ".join((hints or {}).get(precision) or ())
               if hints else "by position (the bundle has no precision hints)"}
    if precision == "fp16":
        from .fp16 import convert_fp16, fp16_summary
        out = convert_fp16(model, head)
        details.update(fp16_summary(out, head), converter="onnxruntime.transformers.float16, keep_io_types")
    elif precision == "int8":
        from .int8 import DEFAULT_CALIBRATION, convert_int8, int8_summary
        calib_method = calib_method or DEFAULT_CALIBRATION
        out = convert_int8(model, backbone, calib_images, calib_method)
        if threshold is not None:
            from .int8_tune import keep_sensitive_layers
            out, details["sensitivity"] = keep_sensitive_layers(out, model, calib_images, threshold, log=log)
        details.update(int8_summary(out), format="QDQ", weights="int8 symmetric per-channel",
                       activations="int8 symmetric per-tensor", bias="float",
                       calibration={"method": calib_method, "images": int(len(calib_images))})
    else:
        raise EdgeError(f"unknown precision '{precision}' (choose from: {', '.join(PRECISIONS)})")
    return drop_unused_opsets(out), details


DEFAULT_MAX_DROP = 0.01          # image AUROC, as a fraction
DEFAULT_MAX_CHANGED = 0.05       # share of evaluation images whose verdict changes
KERNEL_TOLERANCE = 0.03          # integer kernels vs the float simulation, share of the threshold


def ort_int8_graph(model, hints, images, calib_method=None, weight_bits=None):
    """(graph, details) of the INT8 graph for ONNX Runtime's CPU kernels (model.int8.ort.onnx)
    from the preprocessed FP32 `model`, with the bundle's precision hints (its head rewrites)."""
    from .int8_ort import convert_int8_ort
    out, details = convert_int8_ort(model, split_graph(model, hints, "int8")[0], images, calib_method or "minmax",
                                    weight_bits=weight_bits, rewrites=(hints or {}).get("int8_onnxruntime"))
    return drop_unused_opsets(out), details


def budget(max_drop=None, max_changed=None, force=False):
    """The refusal budget: {max_drop, max_changed, kernel_tolerance, force, drop_required}.
    `max_drop` None: the default, skipped where the evaluation images have no labels; given:
    required."""
    for name, v in (("--max-drop", max_drop), ("--max-changed", max_changed)):
        if v is not None and not 0 <= v <= 1:
            raise EdgeError(f"{name} {v}: a fraction between 0 and 1 (0.01 = one AUROC point or 1 % of images)")
    return {"max_drop": DEFAULT_MAX_DROP if max_drop is None else float(max_drop),
            "max_changed": DEFAULT_MAX_CHANGED if max_changed is None else float(max_changed),
            "kernel_tolerance": KERNEL_TOLERANCE, "force": bool(force), "drop_required": max_drop is not None}


def over_budget(acc, limits):
    """Why the variant's accuracy `acc` is over the budget `limits` (a list of reasons)."""
    why = []
    if "auroc_drop" in acc and acc["auroc_drop"] > limits["max_drop"] + 1e-12:
        why.append(f"image AUROC {acc['image_auroc']:.4f} vs {acc['image_auroc_fp32']:.4f} in FP32, a drop of "
                   f"{acc['auroc_drop']:.4f} > --max-drop {limits['max_drop']:g}")
    changed = acc.get("decisions_changed_own_threshold", acc["decisions_changed"])
    if changed > limits["max_changed"] * acc["images"] + 1e-9:
        why.append(f"{changed} of {acc['images']} verdicts changed at its threshold "
                   f"({changed / acc['images']:.1%} > --max-changed {limits['max_changed']:.1%})")
    if acc.get("integer_vs_float_max_rel", 0) > limits["kernel_tolerance"]:
        why.append(f"this CPU's integer kernels ({acc['evaluated_on']}) differ from the quantized arithmetic by "
                   f"{acc['integer_vs_float_max_rel']:.1%} of the threshold (> {limits['kernel_tolerance']:.0%}): "
                   f"the kernels saturate, or the head magnifies their rounding")
    return why


def _score_reference(bundle, name, precision, threads, simulate):
    """The reference frames' scores of a new graph; a quantized graph meant for TensorRT is
    scored with its Q/DQ simulated in float, as its accuracy is, not with this CPU's kernels."""
    from convert.qdq_float import is_quantized, save_float_simulation

    path = os.path.join(bundle.path, name)
    if not (simulate and is_quantized(path)):
        return reference.score_graph(bundle.path, bundle.manifest, name, precision, threads)
    with tempfile.TemporaryDirectory(prefix="edge-qdq-float-") as tmp:
        run_path = save_float_simulation(path, os.path.join(tmp, "float.onnx"))
        how = reference.workstation("onnxruntime", precision) + ", Q/DQ simulated in float"
        return reference.score_graph(bundle.path, bundle.manifest, name, precision, threads, run_path, how)


def _check_variant(bundle, path, precision, trt, eval_data, limits, batch, threads, ref=None, label=None,
                   for_tensorrt=True):
    """Graph check and TensorRT check (when `trt`) of a graph meant for TensorRT, then own
    threshold and accuracy against FP32 of the variant graph at `path`; EdgeError when it fails
    or is over the budget `limits` (see `budget`). INT8 for TensorRT is evaluated with its
    Q/DQ simulated in float (what TensorRT computes, whatever this CPU's integer kernels do);
    INT8 for ONNX Runtime with this CPU's integer kernels, checked against that simulation."""
    from convert.graphcheck import check_graph
    from convert.qdq_float import cpu_kernels, is_quantized, save_float_simulation

    label = label or precision
    checks = {"onnxruntime": "runs it (accuracy below)"}
    if for_tensorrt:
        problems = check_graph(path)
        if problems:
            raise EdgeError(f"{label} graph fails the graph check: {'; '.join(problems)}")
        checks = {"graphcheck": "ok"}
        if trt:
            checks["tensorrt"] = trt_check(path, precision) or "not checked (no TensorRT or TensorRT-RTX here)"
    with tempfile.TemporaryDirectory(prefix="edge-qdq-float-") as tmp:
        simulated = save_float_simulation(path, os.path.join(tmp, "float.onnx")) if is_quantized(path) else None
        run_path = simulated if (simulated and for_tensorrt) else path
        imgs, labels, masks, where, new = evaluation_set(bundle, eval_data, with_newness=True)
        acc, ref, own = compare(bundle, run_path, imgs, labels, masks, batch, threads, ref=ref,
                                own=lambda r, v: variant_threshold(bundle, r, v, where, new),
                                float_path=simulated if (simulated and not for_tensorrt) else None)
    acc["data"] = where
    if simulated and for_tensorrt:
        acc["evaluated_as"] = "Q/DQ simulated in float (the arithmetic TensorRT does)"
    elif simulated:
        acc["evaluated_as"] = "ONNX Runtime's integer kernels"
        acc["evaluated_on"] = cpu_kernels()
    if limits["drop_required"] and "auroc_drop" not in acc:
        raise EdgeError(f"--max-drop needs labelled test images; {where} has none (pass --eval-data)")
    why = over_budget(acc, limits)
    if why and not limits["force"]:
        raise EdgeError(f"{label} variant refused on {where}: {'; '.join(why)}; bundle unchanged "
                        f"(--force keeps it anyway)")
    entry = {"checks": checks, **({"threshold": own} if own else {}),
             "accuracy": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in acc.items()}}
    entry["budget"] = {"max_drop": limits["max_drop"], "max_changed": limits["max_changed"],
                       **({"accepted_over_budget": why} if why else {})}
    return entry, ref


def _report(label, name, entry, log):
    a, own = entry["accuracy"], entry.get("threshold")
    auroc = (f"image AUROC {a['image_auroc']:.4f} (FP32 {a['image_auroc_fp32']:.4f}, drop {a['auroc_drop']:+.4f}); "
             if "auroc_drop" in a else "")
    log(f"{label}: added {name}; on {a['data']}: {auroc}"
        f"largest score difference {a['max_score_diff']:.4g} ({a['max_score_diff_rel']:.2%} of the threshold), "
        f"map {a['max_map_diff']:.4g}, {a['decisions_changed']} decision(s) changed at the FP32 threshold"
        + (f", {a['decisions_changed_own_threshold']} at its own ({own['value']:.4g})" if own else "")
        + (f"; {a['evaluated_as']}" + (f" on {a['evaluated_on']}, within {a['integer_vs_float_max_rel']:.1%} of the "
                                       f"threshold of the quantized arithmetic" if "evaluated_on" in a else "")
           if "evaluated_as" in a else "")
        + (f"; {entry['checks']['tensorrt']}" if "tensorrt" in entry["checks"] else "")
        + (f"; OVER BUDGET, kept (--force): {'; '.join(entry['budget']['accepted_over_budget'])}"
           if entry.get("budget", {}).get("accepted_over_budget") else ""))


def quantize_bundle(bundle_path, precision, calib_images=DEFAULT_CALIB_IMAGES, calib_data=None,
                    calib_method=None, eval_data=None, max_drop=None, trt=True, batch=8, threads=None,
                    log=say, max_changed=None, force=False):
    """Add the variant to the bundle; returns the manifest's graphs.<precision> entry.
    INT8 gets two graphs: the one TensorRT takes (`model.int8.onnx`) and the one ONNX Runtime
    runs fast on CPUs (`model.int8.ort.onnx`, recorded as graphs.int8.onnxruntime); both are
    checked, and either failing leaves the bundle unchanged."""
    import onnx

    if precision not in PRECISIONS:
        raise EdgeError(f"unknown precision '{precision}' (choose from: {', '.join(PRECISIONS)})")
    limits = budget(max_drop, max_changed, force)
    bundle = Bundle(bundle_path)
    t0 = time.monotonic()
    model = preprocess_graph(bundle.graph_path("fp32"))
    images = calibration_images(bundle, calib_data, calib_images) if precision == "int8" else None
    hints = bundle.manifest.get("precision_hints")
    variants = [(None, GRAPH_FILES[precision]) + make_variant(model, precision, images, calib_method,
                                                              threshold=bundle.threshold, hints=hints)]
    if precision == "int8":
        variants.append(("onnxruntime", ENGINE_GRAPH_FILES[("int8", "onnxruntime")])
                        + ort_int8_graph(model, hints, images, calib_method))
    tmps, entries, ref = [], [], None
    try:
        for engine, name, graph, details in variants:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=bundle.path)
            os.close(fd)
            tmps.append(tmp)
            onnx.save(graph, tmp)
            label = f"{precision} ({engine})" if engine else precision
            checked, ref = _check_variant(bundle, tmp, precision, trt, eval_data, limits, batch, threads, ref,
                                          label, for_tensorrt=engine is None)
            floor = {}
            if engine is None:                       # the graph TensorRT takes
                from convert.graphcheck import tensorrt_floor
                floor = tensorrt_floor(tmp)
            entries.append({"file": name, "source": "model.onnx", **floor, **details, **checked})
        # Commit: drop any old entry first, so that a crash between the steps leaves a
        # consistent bundle (without the variant) rather than a stale checksum.
        # Every file the precision may have had (an older run may have written the ORT graph).
        names = {GRAPH_FILES[precision]} | {f for (p, _e), f in ENGINE_GRAPH_FILES.items() if p == precision}
        if any(n in bundle.manifest["files"] for n in names) or precision in bundle.manifest["graphs"]:
            for n in names:
                bundle.manifest["files"].pop(n, None)
            bundle.manifest["graphs"].pop(precision, None)
            bundle.save()
        for (_e, name, _g, _d), tmp in zip(variants, tmps):
            bundle.add_file(name, tmp)
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    for engine, name, _g, _d in variants:    # the reference frames' scores of each new graph
        _score_reference(bundle, name, precision, threads, simulate=engine is None)
    entry = entries[0]
    for (engine, _n, _g, _d), sub in zip(variants[1:], entries[1:]):
        entry[engine] = sub
    entry["seconds"] = round(time.monotonic() - t0, 1)
    bundle.manifest["graphs"][precision] = entry
    bundle.save()
    for (engine, name, _g, _d), e in zip(variants, entries):
        _report(f"{precision} ({engine})" if engine else precision, name, e, log)
    return entry


# ---- command line ---------------------------------------------------------------------
def add_arguments(p):
    from .int8 import CALIBRATION_METHODS, DEFAULT_CALIBRATION

    p.add_argument("bundle", help="model bundle folder")
    p.add_argument("--precision", required=True, choices=PRECISIONS)
    p.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, metavar="N",
                   help=f"int8: good images used for calibration, evenly spaced (default {DEFAULT_CALIB_IMAGES}; 0: all)")
    p.add_argument("--calib-data", metavar="ROOT",
                   help="int8: calibration images from ROOT/train/good (or the folder ROOT) instead of "
                        "the bundle's training data")
    p.add_argument("--calib-method", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION,
                   help=f"int8: activation range method (default {DEFAULT_CALIBRATION}; see docs/precision.md)")
    p.add_argument("--eval-data", metavar="ROOT",
                   help="data set (MVTec AD layout) whose test split the variant is checked on "
                        "(default: the bundle's training data set)")
    p.add_argument("--max-drop", type=float, metavar="X",
                   help=f"refuse the variant if it loses more than X image AUROC against FP32; X is a fraction "
                        f"(default {DEFAULT_MAX_DROP:g} = one AUROC point, checked where the data has a test split)")
    p.add_argument("--max-changed", type=float, metavar="F",
                   help=f"refuse the variant if more than a share F of the evaluation images get another verdict "
                        f"than FP32's, each at its own threshold (default {DEFAULT_MAX_CHANGED:g})")
    p.add_argument("--force", action="store_true",
                   help="keep a variant over the budget (recorded in the manifest as accepted over budget)")
    p.add_argument("--no-trt-check", action="store_true",
                   help="skip the TensorRT/TensorRT-RTX parse-and-build check")
    p.add_argument("--batch", type=int, default=8, help="evaluation batch (default 8)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")


def run(args):
    quantize_bundle(args.bundle, args.precision, args.calib_images, args.calib_data, args.calib_method,
                    args.eval_data, args.max_drop, trt=not args.no_trt_check, batch=args.batch,
                    threads=args.threads, max_changed=args.max_changed, force=args.force)
    return 0
