"""INT8 for ONNX Runtime on CPUs (model.int8.ort.onnx, graphs.int8.onnxruntime).

Speed is measured by scripts/bench_precision.py; here: what the graph is made of, that ONNX
Runtime fuses every backbone convolution into an int8 kernel (the reason for its speed), that
it agrees with FP32, and that the engines pick the right graph and threshold."""

import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from convert.int8_ort import fold_normalisation
from convert.quantize import evaluation_set, preprocess_graph, quantize_bundle
from edge.bundle.manifest import Bundle
from edge.engines import open_engine
from edge.engines.onnxrt import OrtEngine
from tests.helpers import PIPED

CAT = os.path.join(PIPED, "PA_BDP01_TL")
INT8_SCORE_RTOL = 0.25
QUIET = lambda *a, **k: None  # noqa: E731


def _bundle(method, tmp_path_factory):
    from train.settings import TrainSettings
    from train.trainer import train_bundle

    out = str(tmp_path_factory.mktemp(method) / "bundle")
    train_bundle(TrainSettings(method, CAT, out, (128, 128), evaluate=False))
    quantize_bundle(out, "int8", calib_images=12, trt=False, log=QUIET)
    return out


@pytest.fixture(scope="module")
def patchcore(tmp_path_factory):
    return _bundle("patchcore", tmp_path_factory)


@pytest.fixture(scope="module")
def padim(tmp_path_factory):
    return _bundle("padim", tmp_path_factory)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """PaDiM on a ResNet-18 from a local checkpoint (random weights): per-channel ImageNet
    normalisation and ReLU instead of EfficientNet's single mean/std and ReLU6."""
    import torch

    from train.backbones import import_timm
    from train.settings import TrainSettings
    from train.trainer import train_bundle

    folder = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    torch.save(import_timm().create_model("resnet18").state_dict(), folder / "r18.pth")
    out = str(folder / "bundle")
    train_bundle(TrainSettings("padim", CAT, out, (96, 96), backbone="resnet18", weights=str(folder / "r18.pth"),
                               strides=(8, 16), evaluate=False))
    quantize_bundle(out, "int8", calib_images=8, trt=False, log=QUIET)
    return out


def test_padim_within_the_default_budget(padim):
    """PaDiM's INT8 graphs pass the default budget (no --force): each graph's threshold is moved
    by its score difference on test images near the threshold, not on the model's own training
    images (where a Mahalanobis distance moves many times more)."""
    entry = Bundle(padim).manifest["graphs"]["int8"]
    for e in (entry, entry["onnxruntime"]):
        assert "accepted_over_budget" not in e["budget"]
        assert "new to the model" in e["threshold"]["rule"]
        assert e["accuracy"]["decisions_changed_own_threshold"] <= 0.05 * e["accuracy"]["images"]


def _ort_graph(path):
    return onnx.load(Bundle(path).graph_path("int8", "onnxruntime"))


def test_recorded_beside_the_tensorrt_graph(patchcore):
    b = Bundle(patchcore)                                    # verifies every sha256
    entry = b.manifest["graphs"]["int8"]
    sub = entry["onnxruntime"]
    assert entry["file"] == "model.int8.onnx" and sub["file"] == "model.int8.ort.onnx"
    assert {"model.int8.onnx", "model.int8.ort.onnx"} <= set(b.manifest["files"])
    for key in ("image_auroc", "auroc_drop", "max_score_diff", "decisions_changed_own_threshold"):
        assert key in sub["accuracy"], key
    assert sub["threshold"]["value"] > 0 and sub["accuracy"]["auroc_drop"] <= 0.01
    assert b.graph_path("int8") == b.graph_path("int8", "tensorrt") == os.path.join(patchcore, "model.int8.onnx")
    assert b.graph_path("int8", "onnxruntime") == os.path.join(patchcore, "model.int8.ort.onnx")
    assert b.threshold_for("int8", "onnxruntime") == sub["threshold"]["value"]
    assert b.threshold_for("int8", "tensorrt") == entry["threshold"]["value"]
    with open_engine(b, "onnxruntime", "int8") as eng:
        assert eng.graph_path.endswith("model.int8.ort.onnx")


def test_older_bundles_without_it_fall_back(patchcore, tmp_path):
    path = str(tmp_path / "b")
    shutil.copytree(patchcore, path)
    b = Bundle(path)
    del b.manifest["graphs"]["int8"]["onnxruntime"]
    b.save()
    b = Bundle(path)
    assert b.graph_path("int8", "onnxruntime").endswith("model.int8.onnx")
    assert b.threshold_for("int8", "onnxruntime") == b.manifest["graphs"]["int8"]["threshold"]["value"]


@pytest.mark.parametrize("which", ["patchcore", "resnet"])
def test_uint8_frames_feed_the_first_convolution(which, request):
    path = request.getfixturevalue(which)
    assert "folded" in Bundle(path).manifest["graphs"]["int8"]["onnxruntime"]["input"]
    g = _ort_graph(path).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in g.input] == [("frames", TensorProto.UINT8)]
    assert [o.type.tensor_type.elem_type for o in g.output] == [TensorProto.FLOAT, TensorProto.FLOAT]
    readers = [n for n in g.node if "frames" in n.input]
    assert [n.op_type for n in readers] == ["Transpose"]     # no float Cast of the whole frame
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    stem = next(n for n in g.node if n.op_type == "Conv")
    dq = prod[stem.input[0]]
    assert dq.op_type == "DequantizeLinear" and float(inits[dq.input[1]]) == 1.0 and int(inits[dq.input[2]]) == 128
    # The mirrored border and the stem's own padding with each channel's mean, in uint8: by
    # the convolution itself where the means round to the zero point (EfficientNet: 127.5),
    # else by a pad per channel (ImageNet means).
    pads = [n for n in g.node if n.op_type == "Pad"]
    assert all(inits[n.input[2]].dtype == np.uint8 for n in pads if len(n.input) > 2)
    stem_pads = next(x.ints for x in stem.attribute if x.name == "pads")
    if which == "patchcore":
        assert prod[dq.input[0]].op_type == "Pad" and len(pads) == 1 and any(stem_pads)
    else:
        assert prod[dq.input[0]].op_type == "Concat" and len(pads) == 4 and not any(stem_pads)
        assert sorted(int(inits[n.input[2]]) for n in pads[1:]) == [104, 116, 124]


def test_weights_int8_per_channel_activations_uint8_bias_float(patchcore):
    g = _ort_graph(patchcore).graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(convs) > 20
    for n in convs:
        w = prod[n.input[1]]
        assert w.op_type == "DequantizeLinear" and inits[w.input[0]].data_type == TensorProto.INT8
        assert np.abs(numpy_helper.to_array(inits[w.input[0]]).astype(int)).max() <= 64            # 7-bit
        assert len(inits[w.input[1]].dims) == 1 and inits[w.input[1]].dims[0] > 1      # per channel
        assert not numpy_helper.to_array(inits[w.input[2]]).any()                      # symmetric
        assert inits[n.input[2]].data_type == TensorProto.FLOAT
        assert inits[prod[n.input[0]].input[2]].data_type == TensorProto.UINT8       # activations


def test_onnxruntime_fuses_every_convolution(patchcore, padim, tmp_path):
    import onnxruntime as ort

    for name, path in (("pc", patchcore), ("pd", padim)):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(Bundle(path).graph_path("int8", "onnxruntime"), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
        assert ops.count("QLinearConv") > 20 and "Conv" not in ops, name


def test_heads_in_int8(patchcore, padim):
    pc = [n.op_type for n in _ort_graph(patchcore).graph.node]
    assert "MatMulIntegerToFloat" in pc and "ReduceMin" in pc
    pd = _ort_graph(padim).graph
    mmi = [n for n in pd.node if n.op_type == "MatMulInteger"]
    assert len(mmi) == 1
    inits = {i.name: i for i in pd.initializer}
    assert inits[mmi[0].input[1]].data_type == TensorProto.INT8 and len(inits[mmi[0].input[1]].dims) == 3
    assert np.abs(numpy_helper.to_array(inits[mmi[0].input[1]]).astype(int)).max() <= 64      # 7-bit
    pcg = _ort_graph(patchcore).graph
    mm = next(n for n in pcg.node if n.op_type == "MatMulIntegerToFloat")
    bank = next(i for i in pcg.initializer if i.name == mm.input[1])
    assert np.abs(numpy_helper.to_array(bank).astype(int)).max() <= 64


def test_scores_agree_with_fp32(patchcore, padim, resnet):
    for path in (patchcore, padim, resnet):
        b = Bundle(path)
        frames = evaluation_set(b)[0][:6]
        ref = OrtEngine(b.graph_path("fp32")).infer(frames)
        amap, score = OrtEngine(b.graph_path("int8", "onnxruntime")).infer(frames)
        assert amap.shape == ref[0].shape and score.dtype == np.float32
        assert np.abs(score - ref[1]).max() <= INT8_SCORE_RTOL * b.threshold, b.method
        assert b.manifest["graphs"]["int8"]["onnxruntime"]["accuracy"]["auroc_drop"] <= 0.01


# ONNX Runtime's integer kernels against the same quantized arithmetic in float: rounding
# boundaries alone move scores by about 1 % of the threshold; saturating u8s8 kernels (AVX2 or
# AVX-512 without VNNI, 8-bit weights) moved them by 8-9 %.
KERNEL_RTOL = 0.03


def test_integer_kernels_do_the_quantized_arithmetic(patchcore, padim, resnet, tmp_path):
    """Holds on any CPU only if its integer kernels do not saturate: AVX2, AVX-512, VNNI, Arm."""
    from convert.qdq_float import cpu_kernels, save_float_simulation

    for path in (patchcore, padim, resnet):
        b = Bundle(path)
        entry = b.manifest["graphs"]["int8"]["onnxruntime"]
        assert "7-bit" in entry["weights"]
        frames = evaluation_set(b)[0][:16]
        graph = b.graph_path("int8", "onnxruntime")
        sim = save_float_simulation(graph, str(tmp_path / f"{b.method}.float.onnx"))
        (m_int, s_int), (m_sim, s_sim) = OrtEngine(graph).infer(frames), OrtEngine(sim).infer(frames)
        assert np.abs(s_int - s_sim).max() <= KERNEL_RTOL * b.threshold, (b.method, cpu_kernels())
        # recorded by edge quantize on the machine that made the bundle
        assert entry["accuracy"]["integer_vs_float_max_rel"] <= KERNEL_RTOL
        assert entry["accuracy"]["evaluated_on"] and "integer" in entry["accuracy"]["evaluated_as"]


def test_tensorrt_graph_accuracy_is_simulated(patchcore):
    acc = Bundle(patchcore).manifest["graphs"]["int8"]["accuracy"]
    assert "simulated in float" in acc["evaluated_as"] and "integer_vs_float_max_rel" not in acc


@pytest.mark.parametrize("which", ["patchcore", "resnet"])
def test_normalisation_fold_is_exact(which, request, tmp_path):
    """Folding x * a + b into the stem's weights, with the stem's zero padding turned into a
    pad with each channel's mean, changes nothing beyond float rounding."""
    tol = 1e-3
    path = request.getfixturevalue(which)
    model = preprocess_graph(Bundle(path).graph_path("fp32"))
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_normalisation(folded) is not None
    onnx.save(model, str(tmp_path / "a.onnx"))
    onnx.save(folded, str(tmp_path / "b.onnx"))
    frames = evaluation_set(Bundle(path))[0][:2]
    (ma, sa), (mb, sb) = OrtEngine(str(tmp_path / "a.onnx")).infer(frames), OrtEngine(str(tmp_path / "b.onnx")).infer(frames)
    assert np.abs(sa - sb).max() <= tol * np.abs(sa).max()
    assert np.abs(ma - mb).max() <= tol * np.abs(ma).max()
