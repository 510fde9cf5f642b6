"""Every method's exported graph: the interface, the static check, and a real TensorRT
builder (TensorRT-RTX, which shares TensorRT's ONNX parser) parses and builds it."""

import os

import onnx
import pytest

from convert.graphcheck import check_graph
from tests.helpers import PIPED
from train.methods import METHODS
from train.settings import TrainSettings
from train.trainer import train_bundle

CAT = os.path.join(PIPED, "PA_FLR01_TL")


@pytest.fixture(scope="module", params=sorted(METHODS))
def graph(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "b"
    train_bundle(TrainSettings(request.param, CAT, str(out), (64, 96), evaluate=False))
    return str(out / "model.onnx")


def test_interface(graph):
    m = onnx.load(graph)
    (inp,), outs = m.graph.input, m.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "frames" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims == ["batch", 64, 96, 3]
    assert [o.name for o in outs] == ["anomaly_map", "score"]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in outs)


def test_static_check_passes(graph):
    assert check_graph(graph) == []


def test_tensorrt_parses_and_builds(graph):
    trt = pytest.importorskip("tensorrt_rtx", reason="pip install tensorrt-rtx to build plans here")
    from convert.build import serialize_plan
    plan, info = serialize_plan(trt, graph, (1, 4, 4), log=lambda *a, **k: None)
    assert len(plan) > 10000 and info["strongly_typed"]
