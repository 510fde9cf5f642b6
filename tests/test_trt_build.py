"""TensorRT plan building and caching.

Without a GPU these run against TensorRT-RTX (`pip install tensorrt-rtx`): its ONNX parser,
optimisation profiles and build_serialized_network work on the CPU, so the test graphs are
really parsed and built. Deserialising needs a GPU (CUDA error 35 here). Tests marked `gpu`
need real TensorRT and an NVIDIA device and are skipped elsewhere (tests/conftest.py)."""

import json
import os
import types

import numpy as np
import pytest

from convert import build as cb
from edge.bundle.manifest import Bundle
from edge.engines import plan_key as pk
from edge.common.errors import EdgeError
from tests import graphs

ORIN = ("Orin", (8, 7))
A2 = ("NVIDIA A2", (8, 6))


@pytest.fixture(scope="module")
def rtx():
    return pytest.importorskip("tensorrt_rtx", reason="pip install tensorrt-rtx to build plans here")


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("graphs")
    for p in ("fp32", "fp16", "int8"):
        graphs.make_graph(str(d / f"{p}.onnx"), precision=p)
    graphs.make_bad_graph(str(d / "unsupported.onnx"), "unsupported_op")
    return d


@pytest.fixture
def bundle(tmp_path):
    return Bundle(graphs.make_bundle(str(tmp_path / "b"), ("fp32", "fp16", "int8")))


def fake_trt(version="10.3.0.30", name="tensorrt"):
    return types.SimpleNamespace(__name__=name, __version__=version)


def quiet(*_a, **_k):
    pass


# ---- the test graphs themselves --------------------------------------------------------
def test_graph_variants_agree_in_onnxruntime(graph_dir):
    ort = pytest.importorskip("onnxruntime")
    frames = graphs.random_frames(3)
    out = {}
    for p in ("fp32", "fp16", "int8"):
        sess = ort.InferenceSession(str(graph_dir / f"{p}.onnx"), providers=["CPUExecutionProvider"])
        amap, score = sess.run(["anomaly_map", "score"], {"frames": frames})
        assert amap.shape == (3, 32, 32) and amap.dtype == np.float32
        assert score.shape == (3,) and score.dtype == np.float32
        np.testing.assert_allclose(score, amap.max(axis=(1, 2)), rtol=1e-6)
        out[p] = score
    np.testing.assert_allclose(out["fp16"], out["fp32"], rtol=5e-3)
    np.testing.assert_allclose(out["int8"], out["fp32"], rtol=5e-2)


# ---- parse and build with TensorRT-RTX --------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_graph_parses_and_builds(rtx, graph_dir, precision):
    data, info = cb.serialize_plan(rtx, str(graph_dir / f"{precision}.onnx"), (1, 2, 4), precision,
                                   workspace_mb=64, log=quiet)
    assert len(data) > 10000
    assert info["strongly_typed"] is True
    assert info["builder"].startswith("tensorrt_rtx")


def test_network_keeps_the_interface(rtx, graph_dir):
    builder = rtx.Builder(cb._logger(rtx))
    net, _ = cb.parse_network(rtx, builder, str(graph_dir / "fp16.onnx"), cb._logger(rtx))
    inp = net.get_input(0)
    assert (inp.name, tuple(inp.shape), inp.dtype) == ("frames", (-1, 32, 32, 3), rtx.DataType.UINT8)
    outs = {net.get_output(i).name: (tuple(net.get_output(i).shape), net.get_output(i).dtype)
            for i in range(net.num_outputs)}
    assert outs == {"anomaly_map": ((-1, 32, 32), rtx.DataType.FLOAT),
                    "score": ((-1,), rtx.DataType.FLOAT)}


def test_parser_errors_name_the_node(rtx, graph_dir):
    with pytest.raises(EdgeError) as err:
        cb.serialize_plan(rtx, str(graph_dir / "unsupported.onnx"), (1, 1, 1), log=quiet)
    msg = str(err.value)
    assert "mmi_x" in msg and "MatMulInteger" in msg and "unsupported.onnx" in msg
    assert "\n" not in msg


def test_fixed_h_w_only_batch_dynamic(rtx, tmp_path):
    path = graphs.make_graph(str(tmp_path / "fixed.onnx"), batch=2)
    with pytest.raises(EdgeError, match="fixed batch of 2"):
        cb.serialize_plan(rtx, path, (1, 4, 4), log=quiet)
    data, _ = cb.serialize_plan(rtx, path, (2, 2, 2), log=quiet)
    assert data


def test_dla_refused_where_impossible(rtx, graph_dir):
    with pytest.raises(EdgeError, match="FP16 or INT8 only"):
        cb.serialize_plan(rtx, str(graph_dir / "fp32.onnx"), (1, 1, 1), "fp32", dla=0, log=quiet)
    # TensorRT-RTX has no FP16/INT8 builder flags (like TensorRT 11) and no DLA cores.
    with pytest.raises(EdgeError, match="DLA"):
        cb.serialize_plan(rtx, str(graph_dir / "fp16.onnx"), (1, 1, 1), "fp16", dla=0, log=quiet)


# ---- plan keys --------------------------------------------------------------------------
def _key(**over):
    base = dict(gpu="Orin", cc="8.7", runtime="tensorrt", trt_version="10.3.0.30", precision="int8",
                batch_min=1, batch_opt=4, batch_max=4, graph_sha256="ab" * 32)
    base.update(over)
    return pk.PlanKey(**base)


def test_plan_file_name():
    assert _key().filename() == "orin_sm87_trt10.3.0_int8_b1-4_abababab.plan"
    assert _key(gpu="NVIDIA GeForce RTX 4090", cc="8.9", runtime="tensorrt_rtx", trt_version="1.7.1.116",
                precision="fp16", dla=None, batch_opt=2).filename() == \
        "nvidia-geforce-rtx-4090_sm89_rtx1.7.1_fp16_b1-4o2_abababab.plan"
    assert "_dla1_" in _key(dla=1).filename()


@pytest.mark.parametrize("change", [dict(gpu="NVIDIA A2"), dict(cc="8.6"), dict(trt_version="10.7.0.23"),
                                    dict(precision="fp16"), dict(graph_sha256="cd" * 32), dict(dla=0),
                                    dict(runtime="tensorrt_rtx")])
def test_key_changes_refuse_the_plan(change):
    want, other = _key(), _key(**change)
    assert other.mismatches(want) or want.mismatches(other)
    assert want.mismatches(other)
    if "trt_version" not in change and "runtime" not in change and "cc" not in change:
        assert want.filename() != other.filename()


def test_batch_range_must_cover():
    plan = _key(batch_min=1, batch_max=4)
    assert not _key(batch_min=1, batch_opt=1, batch_max=1).mismatches(plan)
    assert not _key(batch_min=2, batch_opt=4, batch_max=4).mismatches(plan)
    assert _key(batch_min=1, batch_opt=8, batch_max=8).mismatches(plan)
    assert _key(batch_opt=1, batch_max=1).mismatches(_key(batch_min=2, batch_max=4))


def test_make_key_and_batches():
    key = pk.make_key(fake_trt(), ORIN, "fp16", pk.parse_batches("4, 1"), "ef" * 32)
    assert (key.gpu, key.cc, key.runtime, key.trt_version) == ("Orin", "8.7", "tensorrt", "10.3.0.30")
    assert (key.batch_min, key.batch_opt, key.batch_max) == (1, 4, 4)
    assert pk.parse_batches("2") == (2, 2, 2)
    for bad in ("", "0", "a,b", "-1"):
        with pytest.raises(EdgeError):
            pk.parse_batches(bad)
    assert pk.PlanKey.from_dict(key.to_dict()) == key


# ---- building into a bundle: cache, sidecar, manifest ------------------------------------
def test_build_writes_plan_sidecar_manifest_and_reuses(rtx, bundle):
    res = cb.build_plan(bundle, "int8", (1, 4, 4), device=ORIN, trt=rtx, log=quiet)
    plan = res["plan"]
    assert res["built"] and os.path.isfile(plan)
    assert os.path.basename(plan).startswith("orin_sm87_rtx1.7") or "orin_sm87_rtx" in plan
    assert os.path.dirname(plan) == os.path.join(bundle.path, "plans")
    with open(pk.sidecar_path(plan)) as f:
        side = json.load(f)
    assert side["key"]["precision"] == "int8" and side["key"]["graph_sha256"] == bundle.manifest["files"]["model.int8.onnx"]
    assert len(side["plan_sha256"]) == 64 and side["strongly_typed"] is True
    # the manifest lists the plan (not among checksummed files) and still verifies
    again = Bundle(bundle.path)
    rel = os.path.relpath(plan, bundle.path)
    assert again.manifest["plans"][rel]["plan_sha256"] == side["plan_sha256"]
    assert rel not in again.manifest["files"]
    # second build: cached; --force: rebuilt
    assert cb.build_plan(again, "int8", (1, 4, 4), device=ORIN, trt=rtx, log=quiet)["built"] is False
    assert cb.build_plan(again, "int8", (1, 4, 4), device=ORIN, trt=rtx, force=True, log=quiet)["built"]
    # the runtime's lookup finds it for any batch it covers, and not for another GPU
    key = pk.make_key(rtx, ORIN, "int8", (2, 2, 2), pk.graph_sha256(again, "int8"))
    assert pk.find_plan(again, key)[0] == plan
    path, refused = pk.find_plan(again, pk.make_key(rtx, A2, "int8", (1, 1, 1), pk.graph_sha256(again, "int8")))
    assert path is None and any("gpu is Orin" in " ".join(why) for _, why in refused)


def test_altered_or_mismatching_plan_is_refused_and_rebuilt(rtx, bundle):
    logs = []
    plan = cb.build_plan(bundle, "fp32", (1, 1, 1), device=ORIN, trt=rtx, log=quiet)["plan"]
    with open(plan, "ab") as f:
        f.write(b"tampered")
    res = cb.build_plan(bundle, "fp32", (1, 1, 1), device=ORIN, trt=rtx, log=logs.append)
    assert res["built"] and any("altered" in r for r in res["refused"])
    assert any("refusing cached plan" in line for line in logs)
    assert not pk.check_plan(plan, res["key"])
    # a sidecar that claims another TensorRT version is refused too
    side = pk.sidecar_path(plan)
    doc = json.load(open(side))
    doc["key"]["trt_version"] = "0.0.0"
    open(side, "w").write(json.dumps(doc))
    res = cb.build_plan(bundle, "fp32", (1, 1, 1), device=ORIN, trt=rtx, log=quiet)
    assert res["built"] and any("trt_version" in r for r in res["refused"])
    os.remove(side)
    assert "sidecar" in pk.check_plan(plan, res["key"])[0]


def test_timing_cache_beside_the_bundle(rtx, bundle):
    tc = pk.timing_cache_path(bundle.path)
    assert tc == os.path.join(bundle.path, "plans", "timing.cache")
    cb.build_plan(bundle, "fp16", (1, 1, 1), device=ORIN, trt=rtx, log=quiet)
    assert os.path.isfile(tc) and os.path.getsize(tc) > 0
    with open(tc, "wb") as f:
        f.write(b"not a timing cache")
    cb.build_plan(bundle, "fp16", (1, 1, 1), device=ORIN, trt=rtx, force=True, log=quiet)
    with open(tc, "rb") as f:
        assert f.read() != b"not a timing cache"       # replaced by a valid one
    assert not [n for n in os.listdir(os.path.dirname(tc)) if n.endswith(".tmp")]


def test_check_only_saves_nothing_and_needs_no_gpu(rtx, bundle, monkeypatch):
    monkeypatch.setattr(cb, "detect_device", lambda: None)
    with pytest.raises(EdgeError, match="no CUDA device"):
        cb.build_plan(bundle, "fp32", (1, 1, 1), trt=rtx, log=quiet)
    res = cb.build_plan(bundle, "fp32", (1, 1, 1), trt=rtx, check_only=True, log=quiet)
    assert res["built"] and res["plan"] is None
    assert not os.path.exists(pk.plans_dir(bundle.path))


def test_cli_check(rtx, bundle, capsys):
    from edge.cli import main

    assert main(["build", bundle.path, "--precision", "fp32,int8", "--batch", "1,2", "--check"]) == 0
    out = capsys.readouterr().out
    assert "fp32: graph parses and builds" in out and "int8: graph parses and builds" in out
    assert main(["build", bundle.path, "--precision", "fp8", "--check"]) == 2


# ---- the engine's side -------------------------------------------------------------------
class _FakeApi:
    def device_info(self):
        return ORIN

    def bound(self):
        import contextlib
        return contextlib.nullcontext(self)


def test_engine_module_imports_without_tensorrt():
    import edge.engines.tensorrt as t

    assert t.TrtEngine.name == "tensorrt"


def test_engine_refuses_missing_or_foreign_plans(rtx, bundle, monkeypatch):
    import edge.engines.cuda as cuda
    import edge.engines.tensorrt as t

    monkeypatch.setattr(t, "import_tensorrt", lambda: rtx)
    monkeypatch.setattr(cuda, "get_api", lambda device=0: _FakeApi())
    with pytest.raises(EdgeError, match=r"no TensorRT plan .*run `edge build .* --precision fp16 --batch 1,2`"):
        t.TrtEngine.from_bundle(bundle, "fp16", batch=2)
    # a plan for another GPU is refused with the reason
    cb.build_plan(bundle, "fp16", (1, 2, 2), device=A2, trt=rtx, log=quiet)
    with pytest.raises(EdgeError, match="gpu is NVIDIA A2"):
        t.TrtEngine.from_bundle(bundle, "fp16", batch=2)
    # a plan for this GPU passes the key check and reaches TensorRT, which needs a real GPU here
    cb.build_plan(bundle, "fp16", (1, 2, 2), device=ORIN, trt=rtx, log=quiet)
    with pytest.raises(EdgeError, match="cannot deserialise"):
        t.TrtEngine.from_bundle(bundle, "fp16", batch=2)


# ---- on a real GPU -----------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("fp16", 2e-2), ("int8", 6e-2)])
def test_tensorrt_matches_onnxruntime(bundle, precision, tol):
    from edge.engines import open_engine

    cb.build_plan(bundle, precision, (1, 4, 4), log=quiet)
    frames = graphs.random_frames(5)          # 5 > max batch 4: run in two chunks
    with open_engine(bundle, "onnxruntime", precision="fp32") as ref, \
            open_engine(bundle, "tensorrt", precision=precision, batch=4) as trt_engine:
        m0, s0 = ref.infer(frames)
        m1, s1 = trt_engine.infer(frames)
    assert m1.shape == m0.shape and s1.shape == s0.shape
    scale = float(np.abs(m0).max())
    assert np.abs(m1 - m0).max() <= tol * scale
    np.testing.assert_allclose(s1, s0, rtol=tol, atol=tol * scale)


# ---- DLA: one static batch ------------------------------------------------------------------
def test_dla_batch_range_refused_before_building(bundle):
    # refused before TensorRT is touched: a range would silently run on the GPU
    with pytest.raises(EdgeError, match=r"--dla needs one static batch.*--batch 4 --dla 0"):
        cb.build_plan(bundle, "fp16", (1, 4, 4), dla=0, device=ORIN, trt=fake_trt(), log=quiet)
    with pytest.raises(EdgeError, match="one static batch"):
        cb.serialize_plan(fake_trt(), bundle.graph_path("fp16"), (2, 4, 4), "fp16", dla=1, log=quiet)
    assert not os.path.isdir(pk.plans_dir(bundle.path))


def test_dla_hint_names_a_static_batch():
    import edge.engines.tensorrt as t

    dla = _key(precision="fp16", batch_min=4, batch_opt=4, batch_max=4, dla=0)
    assert t._build_hint("/b", dla).endswith("--precision fp16 --batch 4 --dla 0`")
    gpu = _key(precision="fp16", batch_min=4, batch_opt=4, batch_max=4)
    assert t._build_hint("/b", gpu).endswith("--precision fp16 --batch 1,4`")


def test_old_tensorrt_refused_by_build(bundle):
    with pytest.raises(EdgeError, match="TensorRT 8.6.2.3 is too old"):
        cb.build_plan(bundle, "fp16", (1, 4, 4), device=ORIN, trt=fake_trt("8.6.2.3"), log=quiet)
