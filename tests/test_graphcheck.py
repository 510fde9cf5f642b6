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
