"""convert.graphcheck: the static check of an exported graph (no TensorRT needed)."""

import pytest

from convert.graphcheck import TRT10_SUPPORTED, check_graph, inspect_graph, main
from tests import graphs


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_good_graphs_have_no_problems(tmp_path, precision):
    path = graphs.make_graph(str(tmp_path / "g.onnx"), precision=precision)
    assert check_graph(path) == []
    problems, summary = inspect_graph(path)
    assert summary["opset"] == graphs.OPSET and summary["initializers"] > 0
    assert summary["initializer_bytes"] > graphs.BANK * graphs.CH


@pytest.mark.parametrize("kind,expect", [
    ("nonzero", "NonZero is data-dependent"),
    ("loop", "Loop is data-dependent"),
    ("dynamic_hw", "only the batch dim may be dynamic"),
    ("float_input", "input 'frames' is FLOAT, not UINT8"),
    ("wrong_output", "output 'score' missing"),
    ("unsupported_op", "MatMulInteger is not supported"),
    ("old_opset", "opset 7 is outside"),
])
def test_bad_graphs_are_reported(tmp_path, kind, expect):
    path = graphs.make_bad_graph(str(tmp_path / f"{kind}.onnx"), kind)
    problems = check_graph(path)
    assert any(expect in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_node_names_in_op_problems(tmp_path):
    path = graphs.make_bad_graph(str(tmp_path / "nz.onnx"), "nonzero")
    assert any("nonzero_x" in p for p in check_graph(path))


def test_unreadable_graphs_never_raise(tmp_path):
    assert "graph not found" in check_graph(str(tmp_path / "missing.onnx"))[0]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not a protobuf" * 10)
    problems = check_graph(str(junk))
    assert problems and isinstance(problems[0], str)


def test_op_list_covers_what_the_methods_use():
    used = {"Cast", "Div", "Sub", "Conv", "Transpose", "Resize", "ReduceMax", "ReduceMin", "MatMul",
            "QuantizeLinear", "DequantizeLinear", "Relu", "Reshape", "Add", "Mul", "ReduceSum",
            "AveragePool", "MaxPool", "Gemm", "Softmax", "Sigmoid", "Concat", "Slice", "Pad"}
    assert used <= TRT10_SUPPORTED
    assert "MatMulInteger" not in TRT10_SUPPORTED and "Unique" not in TRT10_SUPPORTED


def test_command_line(tmp_path, capsys):
    good = graphs.make_graph(str(tmp_path / "good.onnx"))
    bad = graphs.make_bad_graph(str(tmp_path / "bad.onnx"), "dynamic_hw")
    assert main([good]) == 0
    assert main([good, bad]) == 1
    out = capsys.readouterr().out
    assert "initializers" in out and "problem: input 'frames'" in out


# ---- per TensorRT version ------------------------------------------------------------------
def _with_op(tmp_path, op):
    """The good graph plus one node of `op` (a window op takes a size; STFT a signal)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = graphs.build_model()
    g = model.graph
    if op == "STFT":
        g.initializer.extend([numpy_helper.from_array(np.zeros((1, 64, 1), np.float32), "signal"),
                              numpy_helper.from_array(np.array(16, np.int64), "step"),
                              numpy_helper.from_array(np.array(32, np.int64), "flen")])
        g.node.append(helper.make_node("STFT", ["signal", "step", "", "flen"], ["spec"], name="stft_x"))
    else:
        g.initializer.append(numpy_helper.from_array(np.array(16, np.int64), "wsize"))
        g.node.append(helper.make_node(op, ["wsize"], ["spec"], name="window_x"))
    g.output.append(helper.make_tensor_value_info("spec", TensorProto.FLOAT, None))
    path = str(tmp_path / f"{op}.onnx")
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("op,since", [("HannWindow", "10.4"), ("BlackmanWindow", "10.4"), ("STFT", "10.5")])
def test_ops_checked_per_tensorrt_version(tmp_path, op, since):
    from convert.graphcheck import tensorrt_floor

    path = _with_op(tmp_path, op)
    # JetPack 6's TensorRT 10.3 (the default) cannot parse it; the release that added it can
    for problems in (check_graph(path), check_graph(path, tensorrt="10.3.0.30")):
        assert any(f"{op} is parsed only by TensorRT {since}+, not by 10.3" in p for p in problems), problems
    assert not any(op in p for p in check_graph(path, tensorrt=since))
    assert not any(op in p for p in check_graph(path, tensorrt="11.0"))
    assert tensorrt_floor(path) == {"min_tensorrt": since, "min_tensorrt_ops": [op]}


def test_opset_ceiling_follows_the_tensorrt_version(tmp_path):
    import onnx

    from convert.graphcheck import tensorrt_floor

    model = graphs.build_model()
    model.opset_import[0].version = 22
    path = str(tmp_path / "o22.onnx")
    onnx.save(model, path)
    assert any("opset 22 is outside what TensorRT 10.3 parses (9-20)" in p for p in check_graph(path))
    assert not any("opset" in p for p in check_graph(path, tensorrt="10.9"))
    assert tensorrt_floor(path)["min_tensorrt"] == "10.9"
    good = graphs.make_graph(str(tmp_path / "g.onnx"))
    assert tensorrt_floor(good) == {"min_tensorrt": "10.0"}


def test_build_refuses_a_graph_newer_than_this_tensorrt(tmp_path):
    """The bundle records the oldest TensorRT its graph parses with; `edge build` on an
    older one refuses at once, naming the ops (before any builder is made)."""
    import types

    from convert import build as cb
    from edge.bundle.manifest import Bundle
    from edge.common.errors import EdgeError

    bundle = Bundle(graphs.make_bundle(str(tmp_path / "b")))
    bundle.manifest["graphs"]["fp32"].update(min_tensorrt="10.5", min_tensorrt_ops=["STFT"])
    bundle.save()
    trt = types.SimpleNamespace(__name__="tensorrt", __version__="10.3.0.30")
    with pytest.raises(EdgeError, match=r"needs TensorRT 10.5 or newer \(STFT\); this box has TensorRT 10.3.0.30"):
        cb.build_plan(Bundle(bundle.path), "fp32", (1, 1, 1), device=("Orin", (8, 7)), trt=trt,
                      log=lambda *a: None)
