"""The contract every method keeps, with a tiny training configuration (one epoch, 64 x 96):
the exported graph's interface, agreement with PyTorch (checked while training and recorded),
the static check, a real TensorRT parser (TensorRT-RTX, which shares TensorRT's ONNX parser),
evaluation, the manifest's record of how the map and score are made, and `edge run`."""

import json
import math
import os
import shutil
import sqlite3

import numpy as np
import onnx
import pytest

from convert.graphcheck import check_graph
from convert.quantize import quantize_bundle
from edge.bundle.manifest import Bundle
from edge.engines.onnxrt import OrtEngine
from tests.helpers import PIPED, edge, tiny_copy
from train.methods import METHODS
from train.settings import TrainSettings
from train.trainer import EXPORT_TOLERANCE, train_bundle

SOURCE = os.path.join(PIPED, "PA_FLR01_TL")
SIZE = (64, 96)
# A tiny copy of a real category: enough good images for the hold-out rules (folds, and a tail
# block after a gap), two good and two defective test images with their masks. One bundle per
# method is trained on it, and every test of this module reads that bundle.
TINY = {"train/good": 12, "test/good": 2, "test/impurity": 2, "ground_truth/impurity": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_copy(tmp_path_factory.mktemp("tiny") / "PA_FLR01_TL", SOURCE, TINY)


@pytest.fixture(scope="module", params=sorted(METHODS))
def bundle(request, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "b"
    train_bundle(TrainSettings(request.param, tiny, str(out), SIZE, epochs=1, batch_size=8, device="cpu",
                               method_params={"max_bank": 512} if request.param == "patchcore" else {}))
    return request.param, str(out), tiny


def test_interface_and_agreement(bundle):
    method, out, _ = bundle
    m = onnx.load(os.path.join(out, "model.onnx"))
    (inp,), outs = m.graph.input, m.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "frames" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims == ["batch", *SIZE, 3]
    assert [o.name for o in outs] == ["anomaly_map", "score"]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in outs)
    b = Bundle(out)
    assert b.manifest["export_check"]["max_rel_score"] <= EXPORT_TOLERANCE
    frames = np.random.default_rng(0).integers(0, 255, (3, *SIZE, 3), dtype=np.uint8)
    maps, scores = OrtEngine(b.graph_path()).infer(frames)
    assert maps.shape == (3, *SIZE) and np.isfinite(maps).all() and np.isfinite(scores).all()


def test_static_check_passes(bundle):
    assert check_graph(os.path.join(bundle[1], "model.onnx")) == []


def test_tensorrt_parses(bundle):
    trt = pytest.importorskip("tensorrt_rtx", reason="pip install tensorrt-rtx to parse graphs here")
    from convert import build as cb
    logger = cb._logger(trt)
    net, _ = cb.parse_network(trt, trt.Builder(logger), os.path.join(bundle[1], "model.onnx"), logger)
    assert [net.get_output(i).name for i in range(net.num_outputs)] == ["anomaly_map", "score"]


def test_manifest_records_the_method(bundle):
    method, out, _ = bundle
    m = Bundle(out).manifest
    t = m["training"]
    assert m["method"] == method and t["score"] in ("max",) or t["score"].startswith("top:")
    assert t["map"] and t["device"] == "cpu" and t["seed"] == 0
    hints = m["precision_hints"]
    assert set(hints) <= {"fp16", "int8", "fp32", "int8_onnxruntime"}
    assert all(s.startswith("/scorer/") for k, v in hints.items() if k != "int8_onnxruntime" for s in v)
    assert all(r["scope"].startswith("/scorer/") for r in hints.get("int8_onnxruntime", []))
    if "epochs" in t:
        assert t["epochs"] == 1 and len(t["loss_history"]) == 1
    # The hold-out: methods that train networks keep a tail block of the data set's order for
    # early stopping and the threshold; the others are scored in folds, refitted per fold.
    h = t["holdout"]
    assert h["kind"] == ("block" if "epochs" in t else "folds")
    assert h["images"] == m["threshold"]["holdout_images"] == len(json.load(open(os.path.join(out, "holdout.json")))["images"])
    if h["kind"] == "block":
        assert h["images"] + h["gap"] + h["fit_images"] == len(os.listdir(os.path.join(bundle[2], "train", "good")))
        assert h["gap"] > 0 and "tail block" in m["threshold"]["holdout_rule"]
    else:
        assert t["folds"] >= 2 and t["fit_images"] == h["images"]
    ev = m["evaluation"]["fp32"]
    assert 0 <= ev["image_auroc"] <= 1 and not math.isnan(ev["pixel_auroc"])


def test_runs_under_edge_run(bundle, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    for name in sorted(os.listdir(os.path.join(bundle[2], "test", "impurity"))):
        shutil.copy(os.path.join(bundle[2], "test", "impurity", name), src / name)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"bundle": bundle[1], "source": str(src), "records": {"db": str(tmp_path / "r.db")}}))
    res = edge("run", cfg, "--quiet")
    assert res.returncode == 0, res.stderr
    con = sqlite3.connect(str(tmp_path / "r.db"))
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
    finally:
        con.close()
    assert tables


def test_precision_variants_follow_the_method_hints(bundle, tmp_path):
    """`edge quantize` places FP16 and INT8 by the method's precision hints (module scopes of
    the exported graph), makes both variants and reports their accuracy."""
    method, out, _ = bundle
    path = str(tmp_path / "b")
    shutil.copytree(out, path)
    hints = Bundle(path).manifest["precision_hints"]
    quiet = lambda *a, **k: None  # noqa: E731
    for precision in ("fp16", "int8"):
        entry = quantize_bundle(path, precision, calib_images=4, trt=False, force=True, log=quiet)
        assert "image_auroc" in entry["accuracy"] and entry["placement"].startswith("the method's precision hints")
        g = onnx.load(os.path.join(path, entry["file"])).graph
        inits = {i.name: i for i in g.initializer}
        prod = {o: n for n in g.node for o in n.output}

        def reduced(n):                                # a Conv/MatMul with FP16 or Q/DQ INT8 weights
            if n.op_type not in ("Conv", "MatMul", "Gemm") or len(n.input) < 2:
                return False
            w = n.input[1]
            if precision == "fp16":
                return w in inits and inits[w].data_type == onnx.TensorProto.FLOAT16
            return w in prod and prod[w].op_type == "DequantizeLinear"
        low = [n.name for n in g.node if reduced(n)]
        scopes, keep = tuple(hints[precision]), tuple(hints.get("fp32") or ())
        assert low and all(n.startswith(scopes) for n in low), (precision, low[:3])
        assert not keep or not any(n.startswith(keep) for n in low), precision
        if precision == "fp16":                        # every convolution of the hinted scopes
            convs = [n.name for n in onnx.load(os.path.join(path, "model.onnx")).graph.node
                     if n.op_type == "Conv" and n.name.startswith(scopes) and not (keep and n.name.startswith(keep))]
            assert set(convs) <= set(low)
    if "int8_onnxruntime" in hints:                    # the head rewrite the method registered
        ops = {n.op_type for n in onnx.load(os.path.join(path, "model.int8.ort.onnx")).graph.node}
        assert ops & {"MatMulInteger", "MatMulIntegerToFloat"}
