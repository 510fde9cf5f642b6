"""TrtEngine's own logic (plan lookup, buffers bound once, shapes per call, chunking, padding,
copies) against a stand-in for TensorRT and CUDA: the "device" is host memory and the "plan"
runs the graph with ONNX Runtime. The real thing is checked by the gpu-marked tests."""

import contextlib
import ctypes
import dataclasses
import os
import types

import numpy as np
import pytest

from edge.bundle.manifest import Bundle
from edge.engines import plan_key as pk
from edge.common.errors import EdgeError
from tests import graphs

ort = pytest.importorskip("onnxruntime")
DEVICE = ("Orin", (8, 7))


# ---- a stand-in CUDA back-end --------------------------------------------------------------
class FakeApi:
    def __init__(self):
        self.copies = 0
        api = self

        class Stream:
            handle = 1234

            def synchronize(self):
                pass

            def close(self):
                pass

        class DeviceBuffer:
            def __init__(self, nbytes):
                self._mem = np.zeros(max(nbytes, 1), np.uint8)
                self.ptr = self._mem.ctypes.data
                self.nbytes = nbytes
                api.allocs = getattr(api, "allocs", 0) + 1

            def free(self):
                self._mem = None

        self.Stream, self.DeviceBuffer = Stream, DeviceBuffer

    def device_info(self):
        return DEVICE

    def bound(self):
        return contextlib.nullcontext(self)

    def pagelocked_empty(self, shape, dtype):
        return np.zeros(shape, dtype)

    def free_host(self, array):
        pass

    def htod_async(self, dst, host, stream, nbytes=None):
        assert dst._mem is not None, "copy into freed device memory"
        ctypes.memmove(dst.ptr, host.ctypes.data, host.nbytes if nbytes is None else nbytes)
        self.copies += 1

    def dtoh_async(self, host, src, stream, nbytes=None):
        assert src._mem is not None, "copy from freed device memory"
        ctypes.memmove(host.ctypes.data, src.ptr, host.nbytes if nbytes is None else nbytes)
        self.copies += 1


# ---- a stand-in TensorRT whose "plan" names an ONNX graph ----------------------------------
def fake_trt(bmin, bmax, stream_handle=1234):
    mode = types.SimpleNamespace(INPUT="in", OUTPUT="out")

    class Context:
        def __init__(self, eng):
            self.eng, self.addr, self.shape, self.runs = eng, {}, None, []

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def set_input_shape(self, name, shape):
            if not bmin <= shape[0] <= bmax:
                return False
            self.shape = tuple(shape)
            return True

        def execute_async_v3(self, handle):
            assert handle == stream_handle and type(handle) is int
            n = self.shape[0]
            size = int(np.prod(self.shape))
            frames = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(self.addr["frames"]))
            amap, score = self.eng.sess.run(["anomaly_map", "score"], {"frames": frames.reshape(self.shape)})
            ctypes.memmove(self.addr["anomaly_map"], amap.ctypes.data, amap.nbytes)
            ctypes.memmove(self.addr["score"], score.ctypes.data, score.nbytes)
            self.runs.append(n)
            return True

    class Engine:
        def __init__(self, graph):
            self.sess = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
            self.names = ["frames", "anomaly_map", "score"]
            self.num_io_tensors = 3
            self.contexts = []

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return mode.INPUT if name == "frames" else mode.OUTPUT

        def get_tensor_shape(self, name):
            return {"frames": (-1, 32, 32, 3), "anomaly_map": (-1, 32, 32), "score": (-1,)}[name]

        def get_tensor_dtype(self, name):
            return np.uint8 if name == "frames" else np.float32

        def get_tensor_profile_shape(self, name, profile):
            return [(bmin, 32, 32, 3), (bmax, 32, 32, 3), (bmax, 32, 32, 3)]

        def create_execution_context(self):
            self.contexts.append(Context(self))
            return self.contexts[-1]

    class Runtime:
        def __init__(self, logger):
            self.DLA_core = -1              # TensorRT's default: no DLA core

        def deserialize_cuda_engine(self, data):
            return Engine(data.decode()) if data.endswith(b".onnx") else None

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    return types.SimpleNamespace(__name__="tensorrt", __version__="10.3.0.30", Runtime=Runtime,
                                 Logger=Logger, TensorIOMode=mode, nptype=lambda d: d)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    import edge.engines.cuda as cuda
    import edge.engines.tensorrt as t

    api = FakeApi()
    monkeypatch.setattr(cuda, "get_api", lambda device=0: api)
    bundle = Bundle(graphs.make_bundle(str(tmp_path / "b"), ("fp32",)))

    def add_plan(bmin, bmax, device=DEVICE, dla=None):
        trt = fake_trt(bmin, bmax)
        monkeypatch.setattr(t, "import_tensorrt", lambda: trt)
        key = pk.make_key(trt, device, "fp32", (bmin, bmax, bmax), pk.graph_sha256(bundle, "fp32"), dla)
        path = os.path.join(pk.plans_dir(bundle.path), key.filename())
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(bundle.graph_path("fp32").encode())
        doc = pk.write_sidecar(path, key)
        pk.record_in_manifest(bundle, path, key, doc["plan_sha256"])
        return path

    return t, api, bundle, add_plan


def test_engine_matches_onnxruntime_with_chunks(setup):
    t, api, bundle, add_plan = setup
    add_plan(1, 4)
    eng = t.TrtEngine.from_bundle(bundle, "fp32", batch=4)
    assert (eng.min_batch, eng.max_batch, eng.hw) == (1, 4, (32, 32))
    allocs = api.allocs
    frames = graphs.random_frames(6)
    maps, scores = eng.infer(frames)
    assert api.allocs == allocs                       # buffers bound once, not per call
    assert eng.context.runs == [4, 2]                 # real batch sizes, chunked at the max
    ref = ort.InferenceSession(bundle.graph_path("fp32"), providers=["CPUExecutionProvider"])
    m0, s0 = ref.run(["anomaly_map", "score"], {"frames": frames})
    np.testing.assert_array_equal(maps, m0)
    np.testing.assert_array_equal(scores, s0)
    # results are copies, not views of the pinned buffers
    maps2, _ = eng.infer(frames[:1])
    assert maps2.shape == (1, 32, 32) and np.array_equal(maps[0], maps2[0])
    eng.close()


def test_engine_pads_batches_below_the_profile_minimum(setup):
    t, api, bundle, add_plan = setup
    add_plan(2, 2)
    # the runtime asks for batch 1, which a 2-2 plan does not cover: refused, with the fix
    with pytest.raises(EdgeError, match=r"batch range is 2-2"):
        t.TrtEngine.from_bundle(bundle, "fp32", batch=1)
    eng = t.TrtEngine.from_bundle(bundle, "fp32", batch=2)
    maps, scores = eng.infer(graphs.random_frames(3))
    assert maps.shape == (3, 32, 32) and scores.shape == (3,)
    assert eng.context.runs == [2, 2]                 # the last single frame padded to 2


def test_engine_refuses_wrong_input_and_foreign_plan(setup):
    t, api, bundle, add_plan = setup
    add_plan(1, 2, device=("NVIDIA A2", (8, 6)))
    with pytest.raises(EdgeError, match="gpu is NVIDIA A2"):
        t.TrtEngine.from_bundle(bundle, "fp32", batch=2)
    path = add_plan(1, 2)
    eng = t.TrtEngine(path)                            # a plan given directly is checked too
    with pytest.raises(EdgeError, match=r"N x 32 x 32 x 3 uint8"):
        eng.infer(np.zeros((1, 16, 16, 3), np.uint8))
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(EdgeError, match="altered"):
        t.TrtEngine(path)


def test_closed_engine_refuses_infer_and_frees_once(setup):
    t, api, bundle, add_plan = setup
    add_plan(1, 2)
    eng = t.TrtEngine.from_bundle(bundle, "fp32", batch=2)
    eng.infer(graphs.random_frames(1))
    eng.close()
    # no buffer, engine or context is left to write into
    assert eng.host == {} and eng.dev == {} and eng.context is None and eng.engine is None
    with pytest.raises(EdgeError, match="engine is closed"):
        eng.infer(graphs.random_frames(1))
    eng.close()                                        # twice is harmless


def test_dla_plan_found_through_the_run_config(setup, tmp_path):
    """engine.dla in the run configuration reaches the plan lookup (a DLA plan has dla=0 in
    its key) and the runtime's DLA core, the way `edge run` opens its parts."""
    from edge.runtime import config as config_mod
    from edge.runtime.run import close_parts, open_parts

    t, api, bundle, add_plan = setup
    add_plan(2, 2, dla=0)                              # DLA plans have one static batch
    images = tmp_path / "images"
    images.mkdir()
    cv2 = pytest.importorskip("cv2")
    cv2.imwrite(str(images / "a.png"), graphs.random_frames(1)[0])
    raw = {"bundle": bundle.path, "source": str(images),
           "engine": {"kind": "tensorrt", "precision": "fp32", "batch": 2, "dla": 0},
           "records": {"db": str(tmp_path / "r.db")}}
    cfg = config_mod.validate(raw, str(tmp_path))
    assert cfg.engine.dla == 0
    parts = open_parts(cfg)
    try:
        eng = parts["engine"]
        assert "_dla0_" in os.path.basename(eng.plan_path) and eng.runtime.DLA_core == 0
        maps, scores = eng.infer(graphs.random_frames(1))
        assert maps.shape == (1, 32, 32) and eng.context.runs == [2]      # padded to the static batch
    finally:
        close_parts(parts)
    # without the key the DLA plan is not the one asked for: refused, with the right command
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, dla=None))
    with pytest.raises(EdgeError, match=r"dla is 0 \(here: None\)"):
        open_parts(cfg)
    with pytest.raises(EdgeError) as err:
        config_mod.validate(dict(raw, engine={"dla": -1}), str(tmp_path))
    assert "engine.dla" in str(err.value)


def test_plan_opened_directly_runs_on_its_dla_core(setup):
    t, api, bundle, add_plan = setup
    path = add_plan(2, 2, dla=1)
    eng = t.TrtEngine(path)                            # no dla given: the sidecar's core
    assert eng.runtime.DLA_core == 1 and eng.dla == 1
    gpu = t.TrtEngine(add_plan(1, 2))
    assert gpu.dla is None and gpu.runtime.DLA_core == -1
    with pytest.raises(EdgeError, match="dla is 1"):
        t.TrtEngine(path, dla=0)                       # asking for another core is refused


def test_tensorrt_older_than_10_3_is_refused(monkeypatch):
    import sys

    import edge.engines.tensorrt as t

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.2.3"))
    with pytest.raises(EdgeError, match=r"TensorRT 8\.6\.2\.3 is too old.*JetPack 6\.1"):
        t.import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.30"))
    assert t.import_tensorrt().__version__ == "10.3.0.30"


def test_edge_check_looks_for_the_configs_dla_plan(setup, tmp_path, capsys):
    import argparse

    import yaml

    from edge.tools import check as health

    t, api, bundle, add_plan = setup
    add_plan(2, 2, dla=0)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"bundle": bundle.path, "source": str(tmp_path),
                                      "engine": {"kind": "tensorrt", "precision": "fp32", "batch": 2, "dla": 0}}))
    parser = argparse.ArgumentParser()
    health.add_arguments(parser)
    health.run(parser.parse_args(["--config", str(config), "--min-free-mb", "0"]))
    engine_line = next(line for line in capsys.readouterr().out.splitlines() if " engine " in line)
    assert engine_line.startswith("ok") and "_dla0_b2-2_" in engine_line, engine_line
