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
from edge.bundle.manifest import Bundle
from edge.engines.onnxrt import OrtEngine
from tests.helpers import PIPED, edge
from train.methods import METHODS
from train.settings import TrainSettings
from train.trainer import EXPORT_TOLERANCE, train_bundle

CAT = os.path.join(PIPED, "PA_FLR01_TL")
SIZE = (64, 96)


@pytest.fixture(scope="module", params=sorted(METHODS))
def bundle(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "b"
    train_bundle(TrainSettings(request.param, CAT, str(out), SIZE, epochs=1, batch_size=8, device="cpu",
                               method_params={"max_bank": 512} if request.param == "patchcore" else {}))
    return request.param, str(out)


def test_interface_and_agreement(bundle):
    method, out = bundle
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
    method, out = bundle
    m = Bundle(out).manifest
    t = m["training"]
    assert m["method"] == method and t["score"] in ("max",) or t["score"].startswith("top:")
    assert t["map"] and t["device"] == "cpu" and t["seed"] == 0
    assert set(m["precision_hints"]) <= {"fp16", "int8", "fp32"}
    assert all(s.startswith("/scorer/") for v in m["precision_hints"].values() for s in v)
    if "epochs" in t:
        assert t["epochs"] == 1 and len(t["loss_history"]) == 1
    ev = m["evaluation"]["fp32"]
    assert 0 <= ev["image_auroc"] <= 1 and not math.isnan(ev["pixel_auroc"])


def test_runs_under_edge_run(bundle, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    for name in sorted(os.listdir(os.path.join(CAT, "test", "impurity")))[:3]:
        shutil.copy(os.path.join(CAT, "test", "impurity", name), src / name)
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
