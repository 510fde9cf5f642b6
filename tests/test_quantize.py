"""Issue 5: FP16 and INT8 variants of a trained bundle (precision in the graph).

One small PatchCore bundle (128 x 128, one PIPED category) is trained per module; each test
works on a copy. Speed is not tested here (scripts/bench_precision.py measures it)."""

import importlib.util
import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from convert.graphcheck import check_graph
from convert.quantize import preprocess_graph, quantize_bundle, split_graph
from edge.bundle.manifest import Bundle
from edge.engines.onnxrt import OrtEngine
from edge.common.errors import EdgeError
from tests.helpers import PIPED

CAT = os.path.join(PIPED, "PA_BDP01_TL")

# Largest score difference against FP32, relative to the bundle's threshold.
FP16_SCORE_RTOL = 0.01
INT8_SCORE_RTOL = 0.25


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from train.settings import TrainSettings
    from train.trainer import train_bundle

    out = str(tmp_path_factory.mktemp("pc") / "bundle")
    train_bundle(TrainSettings("patchcore", CAT, out, (128, 128), evaluate=False))
    return out


@pytest.fixture(scope="module")
def variants(trained, tmp_path_factory):
    """A copy of the bundle with both variants added (with the TensorRT-RTX build check)."""
    path = str(tmp_path_factory.mktemp("variants") / "bundle")
    shutil.copytree(trained, path)
    quiet = lambda *a, **k: None  # noqa: E731
    quantize_bundle(path, "fp16", log=quiet)
    quantize_bundle(path, "int8", calib_images=12, log=quiet)
    return path


@pytest.fixture
def bundle_copy(trained, tmp_path):
    path = str(tmp_path / "bundle")
    shutil.copytree(trained, path)
    return path


def _io(model):
    g = model.graph
    inits = {i.name for i in g.initializer}
    return ([(i.name, i.type.tensor_type.elem_type) for i in g.input if i.name not in inits],
            [(o.name, o.type.tensor_type.elem_type) for o in g.output])


def test_split_keeps_head_out_of_backbone(trained):
    model = preprocess_graph(os.path.join(trained, "model.onnx"))
    hints = Bundle(trained).manifest["precision_hints"]
    assert hints["fp16"] == ["/scorer/features/"] and "/scorer/head/" in hints["fp32"]
    backbone, head = split_graph(model, hints, "fp16")
    assert backbone and head and not set(backbone) & set(head)
    assert all(n.startswith("/scorer/features/") for n in backbone)
    assert any("/backbone/" in n and "Conv" in n for n in backbone)
    assert sum("/backbone/" in n and "Conv" in n for n in head) == 0
    # Hints that allow no convolution: no variant, said plainly.
    with pytest.raises(EdgeError, match="allow no convolution in fp16"):
        split_graph(model, {"fp16": ["/scorer/head/"]}, "fp16")
    # A bundle without hints (trained before methods gave them): split by position.
    backbone, head = split_graph(model)
    assert backbone and head and not set(backbone) & set(head)
    assert all("/head/" not in n and "/smoother/" not in n and "/embedder/" not in n for n in backbone)
    assert any("/head/" in n for n in head) and any("/smoother/" in n for n in head)
    assert sum("/backbone/" in n and "Conv" in n for n in head) == 0


def test_variants_recorded_in_manifest(variants):
    b = Bundle(variants)                                   # verifies every sha256
    assert set(b.precisions()) == {"fp32", "fp16", "int8"}
    # the oldest TensorRT each graph parses with (JetPack 6's 10.3 takes them all)
    assert b.manifest["graphs"]["fp32"]["min_tensorrt"] == "10.0"
    for p, name in (("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")):
        entry = b.manifest["graphs"][p]
        assert entry["file"] == name and name in b.manifest["files"]
        assert entry["min_tensorrt"] == "10.0" and "min_tensorrt" not in entry.get("onnxruntime", {})
        acc = entry["accuracy"]
        for key in ("image_auroc", "image_auroc_fp32", "auroc_drop", "max_score_diff", "max_map_diff"):
            assert key in acc, (p, key)
        assert acc["data"].endswith("/test") and acc["images"] > 0
        assert entry["checks"]["graphcheck"] == "ok"
    assert not [f for f in os.listdir(variants) if f.endswith(".tmp")]


def test_io_types_unchanged(variants):
    ref = _io(onnx.load(os.path.join(variants, "model.onnx")))
    assert ref[0] == [("frames", TensorProto.UINT8)]
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        assert _io(onnx.load(os.path.join(variants, name))) == ref


def test_fp16_casts_and_fp32_head(variants):
    m = onnx.load(os.path.join(variants, "model.fp16.onnx"))
    casts = [n for n in m.graph.node if n.op_type == "Cast"]
    to = {a.i for n in casts for a in n.attribute if a.name == "to"}
    assert TensorProto.FLOAT16 in to and TensorProto.FLOAT in to
    inits = {i.name: i for i in m.graph.initializer}
    fp16_weights = [i for i in inits.values() if i.data_type == TensorProto.FLOAT16]
    assert len(fp16_weights) > 20                          # the backbone's convolutions
    # No FP16 rounding inside the head: no FP32 -> FP16 -> FP32 round trips, no FP16 inputs.
    prod = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.op_type == "Cast" and n.input[0] in prod:
            assert prod[n.input[0]].op_type != "Cast", n.name
        if n.name.startswith(("/scorer/head/", "/smoother/")):
            for t in n.input:
                p = prod.get(t)
                assert not (p is not None and p.op_type == "Cast"
                            and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in p.attribute)), n.name
    # The head and the map smoothing keep FP32 weights (memory bank, Gaussian kernels).
    for n in m.graph.node:
        if n.name.startswith(("/scorer/head/", "/smoother/")) and n.op_type in ("MatMul", "Conv"):
            for t in n.input:
                if t in inits:
                    assert inits[t].data_type == TensorProto.FLOAT, (n.name, t)


def test_int8_qdq_and_float_bias(variants):
    m = onnx.load(os.path.join(variants, "model.int8.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    assert not [i.name for i in m.graph.initializer if i.data_type == TensorProto.INT32]
    prod = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "Conv" and n.name.startswith("/scorer/features/backbone/")]
    assert convs
    for n in convs:
        assert prod[n.input[0]].op_type == "DequantizeLinear"          # activation Q/DQ
        assert prod[n.input[1]].op_type == "DequantizeLinear"          # int8 weights
        if len(n.input) > 2:
            assert n.input[2] in inits and inits[n.input[2]].data_type == TensorProto.FLOAT
    # Zero points are int8 and 0 (symmetric, as TensorRT wants).
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = inits[n.input[2]]
            assert zp.data_type == TensorProto.INT8
            assert not onnx.numpy_helper.to_array(zp).any()
    # Nothing of the head is quantized.
    for n in m.graph.node:
        if n.name.startswith(("/scorer/head/", "/smoother/")) and n.op_type in ("MatMul", "Conv"):
            assert all(prod.get(t) is None or prod[t].op_type != "DequantizeLinear" for t in n.input)


def test_scores_agree_with_fp32(variants, tmp_path):
    """FP16 under ONNX Runtime's float kernels; INT8 for TensorRT with its Q/DQ simulated in
    float, the arithmetic TensorRT does (this CPU's integer kernels play no part), as in the
    manifest's accuracy."""
    from convert.qdq_float import save_float_simulation

    b = Bundle(variants)
    frames = np.stack([np.asarray(f) for f in _frames(b, 6)])
    ref = OrtEngine(b.graph_path("fp32")).infer(frames)
    int8 = save_float_simulation(b.graph_path("int8"), str(tmp_path / "int8.float.onnx"))
    for p, path, rtol in (("fp16", b.graph_path("fp16"), FP16_SCORE_RTOL), ("int8", int8, INT8_SCORE_RTOL)):
        amap, score = OrtEngine(path).infer(frames)
        assert amap.dtype == np.float32 and score.dtype == np.float32 and amap.shape == ref[0].shape
        assert np.abs(score - ref[1]).max() <= rtol * b.threshold, p
    acc = b.manifest["graphs"]
    assert acc["fp16"]["accuracy"]["auroc_drop"] <= 0.002
    assert acc["int8"]["accuracy"]["auroc_drop"] <= 0.01
    assert "simulated in float" in acc["int8"]["accuracy"]["evaluated_as"]
    assert acc["int8"]["budget"] == {"max_drop": 0.01, "max_changed": 0.05}


def _frames(b, n):
    from convert.quantize import evaluation_set
    return evaluation_set(b)[0][:n]


def test_variants_pass_graphcheck_and_tensorrt_rtx(variants):
    pytest.importorskip("tensorrt_rtx")
    from convert.quantize import trt_check

    b = Bundle(variants)
    for p in ("fp16", "int8"):
        assert check_graph(b.graph_path(p)) == []
        assert "parses and builds" in b.manifest["graphs"][p]["checks"]["tensorrt"]
    assert "parses and builds" in trt_check(b.graph_path("int8"), "int8")


def _snapshot(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def test_max_drop_refuses_and_leaves_bundle_unchanged(bundle_copy, monkeypatch, capsys):
    from convert import quantize as q
    from edge.cli import main

    real = q.compare

    def lossy(*a, **k):                        # the real evaluation, then 3 AUROC points lost
        res, ref, own = real(*a, **k)
        res.update(image_auroc=res["image_auroc_fp32"] - 0.03, auroc_drop=0.03)
        return res, ref, own

    monkeypatch.setattr(q, "compare", lossy)
    before = _snapshot(bundle_copy)
    with pytest.raises(EdgeError, match="refused"):
        quantize_bundle(bundle_copy, "fp16", max_drop=0.01, trt=False, log=lambda *a: None)
    assert _snapshot(bundle_copy) == before
    # The command line: exit status 2, message on stderr, bundle unchanged.
    rc = main(["quantize", bundle_copy, "--precision", "fp16", "--max-drop", "0.01", "--no-trt-check"])
    assert rc == 2 and "refused" in capsys.readouterr().err
    assert _snapshot(bundle_copy) == before
    # Within the bound it is accepted.
    assert main(["quantize", bundle_copy, "--precision", "fp16", "--max-drop", "0.05", "--no-trt-check"]) == 0
    assert Bundle(bundle_copy).manifest["graphs"]["fp16"]["accuracy"]["auroc_drop"] == 0.03


def test_bad_max_drop_is_refused(bundle_copy):
    with pytest.raises(EdgeError, match="fraction"):
        quantize_bundle(bundle_copy, "int8", max_drop=1.5, trt=False)
    with pytest.raises(EdgeError, match="fraction"):
        quantize_bundle(bundle_copy, "int8", max_changed=-0.1, trt=False)


def test_default_budget_refuses_and_force_keeps(bundle_copy, monkeypatch, capsys):
    """Without --max-drop the default budget applies (0.01 AUROC, 5 % changed verdicts);
    --force keeps a variant over it and records why."""
    from convert import quantize as q
    from edge.cli import main

    real = q.compare

    def flipping(*a, **k):                     # the real evaluation, then 4 of 64 verdicts changed
        res, ref, own = real(*a, **k)
        res.update(decisions_changed_own_threshold=4)
        return res, ref, own

    monkeypatch.setattr(q, "compare", flipping)
    before = _snapshot(bundle_copy)
    rc = main(["quantize", bundle_copy, "--precision", "fp16", "--no-trt-check"])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and "4 of 64 verdicts" in err and "--force" in err
    assert _snapshot(bundle_copy) == before
    assert main(["quantize", bundle_copy, "--precision", "fp16", "--no-trt-check", "--max-changed", "0.1"]) == 0
    assert main(["quantize", bundle_copy, "--precision", "fp16", "--no-trt-check", "--force"]) == 0
    entry = Bundle(bundle_copy).manifest["graphs"]["fp16"]
    assert "4 of 64 verdicts" in entry["budget"]["accepted_over_budget"][0]


def test_without_test_split_differences_only(bundle_copy, tmp_path):
    good = tmp_path / "set" / "train" / "good"
    good.mkdir(parents=True)
    src = os.path.join(CAT, "train", "good")
    for f in sorted(os.listdir(src))[:4]:
        shutil.copy(os.path.join(src, f), good / f)
    with pytest.raises(EdgeError, match="labelled"):
        quantize_bundle(bundle_copy, "fp16", eval_data=str(tmp_path / "set"), max_drop=0.01, trt=False,
                        log=lambda *a: None)
    entry = quantize_bundle(bundle_copy, "fp16", eval_data=str(tmp_path / "set"), trt=False, log=lambda *a: None)
    acc = entry["accuracy"]
    assert acc["images"] == 4 and "auroc_drop" not in acc and acc["max_score_diff"] >= 0
    assert "no test split" in acc["data"]


def test_variant_threshold_from_the_same_held_out_images(variants):
    b = Bundle(variants)
    for p in ("fp16", "int8"):
        entry = b.manifest["graphs"][p]
        thr = entry["threshold"]
        assert thr["value"] > 0 and thr["source"] == b.manifest["threshold"]["source"]
        assert "decisions_changed_own_threshold" in entry["accuracy"]
    # FP16 barely moves scores: its own threshold is within 1 % of FP32's.
    assert abs(b.manifest["graphs"]["fp16"]["threshold"]["value"] - b.threshold) <= 0.01 * b.threshold


def test_tensorrt_int8_quantizes_inputs_not_outputs(variants):
    """NVIDIA's placement: Q/DQ on the inputs of convolutions (activation and weights), none
    between a convolution and its activation (that would quantize the pre-activation)."""
    m = onnx.load(Bundle(variants).graph_path("int8"))
    prod = {o: n for n in m.graph.node for o in n.output}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert sum(getattr(prod.get(n.input[0]), "op_type", "") == "DequantizeLinear" for n in convs) >= len(convs) - 6
    acts = [n for n in m.graph.node if n.op_type in ("Clip", "Relu") and getattr(prod.get(n.input[0]), "op_type", "")
            in ("DequantizeLinear", "Conv")]
    assert acts and all(prod[n.input[0]].op_type == "Conv" for n in acts)


def test_variant_shift_from_images_new_to_the_model():
    """The variant's threshold moves by its score difference near the threshold on images new to
    the model, not by the larger one on the images the model was fitted on (scores near zero)."""
    from convert.quantize import variant_threshold

    class B:
        manifest = {"threshold": {"value": 100.0, "source": "held-out good images"}}

    ref = np.concatenate([np.full(20, 5.0), np.linspace(60, 140, 40)])
    var = np.concatenate([ref[:20] + 40.0, ref[20:] + np.where(np.abs(ref[20:] - 100) < 20, 3.0, 10.0)])
    thr = variant_threshold(B(), ref, var, "set/test", new_to_model=True)
    assert thr["value"] == pytest.approx(103.0) and "nearest the threshold" in thr["rule"]
    # Only the model's own training images: no shift can be measured on them; FP32's is kept.
    thr = variant_threshold(B(), ref[:20], var[:20], "set training good images", new_to_model=False)
    assert thr["value"] == 100.0 and thr["shift"] == 0 and "no image new to the model" in thr["rule"]


def test_sensitive_layers_in_fp16_build_and_simulate(variants, tmp_path):
    """A layer taken out of INT8 (its Q/DQ bypassed, FP16 between casts) still passes the
    graph check and TensorRT-RTX's strongly typed build, and the float simulation runs it."""
    from convert.int8_tune import bypass, layers_to_fp16, quantized_convs
    from convert.qdq_float import save_float_simulation
    from convert.quantize import trt_check

    b = Bundle(variants)
    assert "error_all_int8" in b.manifest["graphs"]["int8"]["sensitivity"]
    fp32 = preprocess_graph(b.graph_path("fp32"))
    q = onnx.load(b.graph_path("int8"))
    convs = quantized_convs(q)
    assert len(convs) > 20
    names = {convs[0], convs[len(convs) // 2]}
    m = layers_to_fp16(bypass(q, fp32, names), names)
    assert len(quantized_convs(m)) == len(convs) - 2
    fp16 = [i for i in m.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert len(fp16) >= 2
    path = str(tmp_path / "mixed.onnx")
    onnx.save(m, path)
    assert check_graph(path) == []
    frames = np.stack([np.asarray(f) for f in _frames(b, 4)])
    ref = OrtEngine(b.graph_path("fp32")).infer(frames)[1]
    sim = OrtEngine(save_float_simulation(path, str(tmp_path / "mixed.float.onnx"))).infer(frames)[1]
    assert np.abs(sim - ref).max() <= INT8_SCORE_RTOL * b.threshold
    if importlib.util.find_spec("tensorrt_rtx") or importlib.util.find_spec("tensorrt"):
        assert "parses and builds" in trt_check(path, "int8")
