"""The CUDA back-ends (edge/engines/cuda.py) against stand-ins for pycuda's driver module and
cuda-python's runtime bindings that keep CUDA's rules where they matter here:

  * a context is current on one CPU thread: each thread has its own context stack, and a
    driver call (allocation, copy, stream) on a thread with no current context fails with
    "invalid device context", as pycuda's calls do;
  * cuda-python's handle types refuse int() (deprecated there; the native-handle helper is
    the way), so a handle taken with int() fails.

The device's memory is host memory, so the TensorRT engine runs end to end (its "plan" runs
the graph with ONNX Runtime, as in test_trt_engine.py)."""

import ctypes
import os
import sys
import threading
import types

import numpy as np
import pytest

from edge.common.errors import EdgeError
from tests import graphs

pytest.importorskip("onnxruntime")


class LogicError(Exception):
    pass


# ---- a pycuda.driver stand-in ---------------------------------------------------------------
def fake_pycuda():
    local = threading.local()
    log = {"pushes": 0, "pops": 0, "copies": []}

    def stack():
        if not hasattr(local, "stack"):
            local.stack = []
        return local.stack

    def need_context(what):
        if not stack():
            raise LogicError(f"{what} failed: invalid device context")

    class Context:
        def push(self):
            stack().append(self)
            log["pushes"] += 1

        @staticmethod
        def pop():
            if not stack():
                raise LogicError("cuCtxPopCurrent failed: invalid device context")
            stack().pop()
            log["pops"] += 1

        @staticmethod
        def get_current():
            return stack()[-1] if stack() else None

    primary = Context()

    class Device:
        @staticmethod
        def count():
            return 1

        def __init__(self, n):
            self.n = n

        def name(self):
            return "Orin"

        def compute_capability(self):
            return (8, 7)

        def retain_primary_context(self):
            return primary

    class DeviceAllocation:
        def __init__(self, nbytes):
            need_context("cuMemAlloc")
            self.mem = np.zeros(nbytes, np.uint8)

        def __int__(self):
            return self.mem.ctypes.data

        def free(self):
            need_context("cuMemFree")
            self.mem = None

    class HostAllocation:
        def __init__(self, shape, dtype):
            need_context("cuMemHostAlloc")
            self.arr = np.zeros(shape, dtype)
            self.__array_interface__ = self.arr.__array_interface__

        def free(self):
            need_context("cuMemFreeHost")

    class Stream:
        def __init__(self):
            need_context("cuStreamCreate")
            self.handle = 4321

        def synchronize(self):
            need_context("cuStreamSynchronize")

    def memcpy_htod_async(dst, src, stream=None):
        need_context("cuMemcpyHtoDAsync")
        src = np.asarray(src)
        ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)
        log["copies"].append(threading.current_thread().name)

    def memcpy_dtoh_async(dst, src, stream=None):
        need_context("cuMemcpyDtoHAsync")
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)
        log["copies"].append(threading.current_thread().name)

    drv = types.ModuleType("pycuda.driver")
    drv.__dict__.update(
        init=lambda: None, Device=Device, Context=Context, Stream=Stream, LogicError=LogicError,
        mem_alloc=DeviceAllocation, pagelocked_empty=lambda shape, dtype: np.asarray(HostAllocation(shape, dtype)),
        memcpy_htod_async=memcpy_htod_async, memcpy_dtoh_async=memcpy_dtoh_async)
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    return pkg, drv, log, stack


@pytest.fixture
def pycuda_api(monkeypatch):
    import edge.engines.cuda as cuda

    pkg, drv, log, stack = fake_pycuda()
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    monkeypatch.setattr(cuda, "_API", None)
    api = cuda.get_api()
    assert api.label == "pycuda"
    return api, log, stack


def run_in_thread(fn, name="edge-infer"):
    out = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as exc:   # reported to the test below
            out["error"] = exc
    t = threading.Thread(target=target, name=name)
    t.start()
    t.join(30)
    return out


def test_pycuda_copies_work_on_any_thread_and_leave_no_context_behind(pycuda_api):
    api, log, stack = pycuda_api
    assert stack() == []                   # opening the back-end binds nothing to this thread
    with api.bound():
        stream = api.Stream()
        host = api.pagelocked_empty((4,), np.float32)
        dev = api.DeviceBuffer(host.nbytes)
    host[:] = [1, 2, 3, 4]

    def copy_round_trip():
        api.htod_async(dev, host, stream)
        back = np.zeros_like(host)
        api.dtoh_async(back, dev, stream)
        stream.synchronize()
        assert stack() == []               # popped again after each call
        return back

    out = run_in_thread(copy_round_trip)
    assert "error" not in out, out.get("error")
    np.testing.assert_array_equal(out["result"], [1, 2, 3, 4])
    with api.bound():                       # re-entrant: one push for the whole block
        with api.bound():
            api.htod_async(dev, host, stream)
        assert len(stack()) == 1
    assert stack() == [] and log["pushes"] == log["pops"]


def test_tensorrt_engine_opened_on_main_thread_infers_on_another(pycuda_api, tmp_path, monkeypatch):
    """The service opens the engine on the main thread (open_parts) and infers on the
    pipeline's edge-infer thread."""
    import edge.engines.tensorrt as t
    from edge.bundle.manifest import Bundle
    from edge.engines import plan_key as pk
    from tests.test_trt_engine import DEVICE, fake_trt

    api, log, stack = pycuda_api
    bundle = Bundle(graphs.make_bundle(str(tmp_path / "b"), ("fp32",)))
    trt = fake_trt(1, 4, stream_handle=4321)
    monkeypatch.setattr(t, "import_tensorrt", lambda: trt)
    key = pk.make_key(trt, DEVICE, "fp32", (1, 4, 4), pk.graph_sha256(bundle, "fp32"))
    path = os.path.join(pk.plans_dir(bundle.path), key.filename())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(bundle.graph_path("fp32").encode())
    pk.write_sidecar(path, key)

    engine = t.TrtEngine.from_bundle(bundle, "fp32", batch=4)
    assert stack() == []
    frames = graphs.random_frames(5)
    out = run_in_thread(lambda: engine.infer(frames))
    assert "error" not in out, out.get("error")
    maps, scores = out["result"]
    ref_maps, ref_scores = engine.infer(frames)          # and on the main thread as well
    np.testing.assert_array_equal(maps, ref_maps)
    np.testing.assert_array_equal(scores, ref_scores)
    assert "edge-infer" in log["copies"]
    # closing (on yet another thread) frees the buffers; a later infer is refused
    out = run_in_thread(engine.close, name="closer")
    assert "error" not in out, out.get("error")
    with pytest.raises(EdgeError, match="closed"):
        engine.infer(frames)
    assert log["pushes"] == log["pops"]


# ---- a cuda-python stand-in ------------------------------------------------------------------
def fake_cuda_python(with_helper=True):
    local = threading.local()
    memory = {}

    class cudaError_t(int):
        pass

    OK = cudaError_t(0)

    class cudaStream_t:
        def __init__(self, addr):
            self._addr = addr

        def __int__(self):
            raise TypeError("int() of a CUDA handle is gone: use cuda.bindings.utils.get_cuda_native_handle")

    def cudaSetDevice(n):
        local.device = n
        return (OK,)

    def alloc(nbytes):
        buf = np.zeros(nbytes, np.uint8)
        memory[buf.ctypes.data] = buf
        return (OK, buf.ctypes.data)

    rt = types.ModuleType("cuda.bindings.runtime")
    rt.__dict__.update(
        cudaGetDeviceCount=lambda: (OK, 2), cudaSetDevice=cudaSetDevice,
        cudaStreamCreate=lambda: (OK, cudaStream_t(0xBEEF)), cudaStreamSynchronize=lambda s: (OK,),
        cudaStreamDestroy=lambda s: (OK,), cudaMalloc=alloc, cudaMallocHost=alloc,
        cudaFree=lambda p: (OK,), cudaFreeHost=lambda p: (OK,),
        cudaGetErrorString=lambda e: (OK, b"error"),
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2))

    def cudaMemcpyAsync(dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        local.copies = getattr(local, "copies", 0) + 1
        return (OK,)
    rt.cudaMemcpyAsync = cudaMemcpyAsync
    utils = types.ModuleType("cuda.bindings.utils")
    if with_helper:
        utils.get_cuda_native_handle = lambda obj: obj._addr
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime, bindings.utils = rt, utils
    top = types.ModuleType("cuda")
    top.bindings = bindings
    modules = {"cuda": top, "cuda.bindings": bindings, "cuda.bindings.runtime": rt,
               "cuda.bindings.utils": utils}
    return modules, local


def test_cuda_python_stream_handle_is_the_native_handle(monkeypatch):
    import edge.engines.cuda as cuda

    modules, local = fake_cuda_python()
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setitem(sys.modules, "pycuda", None)      # pycuda absent: cuda-python is used
    monkeypatch.setattr(cuda, "_API", None)
    api = cuda.get_api(device=1)
    assert api.label == "cuda-python"
    stream = api.Stream()
    assert stream.handle == 0xBEEF and type(stream.handle) is int
    host = api.pagelocked_empty((3,), np.float32)
    host[:] = [5, 6, 7]
    dev = api.DeviceBuffer(host.nbytes)

    def work():
        api.htod_async(dev, host, stream)
        back = np.zeros_like(host)
        api.dtoh_async(back, dev, stream)
        return back, local.device          # the device was made current on this thread
    out = run_in_thread(work)
    assert "error" not in out, out.get("error")
    back, device = out["result"]
    np.testing.assert_array_equal(back, [5, 6, 7])
    assert device == 1


# ---- on a real GPU ---------------------------------------------------------------------------
@pytest.mark.gpu
def test_real_engine_infers_on_another_thread(tmp_path):
    from convert import build as cb
    from edge.bundle.manifest import Bundle
    from edge.engines import open_engine

    bundle = Bundle(graphs.make_bundle(str(tmp_path / "b"), ("fp32",)))
    cb.build_plan(bundle, "fp32", (1, 4, 4), log=lambda *a: None)
    frames = graphs.random_frames(5)
    with open_engine(bundle, "tensorrt", precision="fp32", batch=4) as engine:
        m0, s0 = engine.infer(frames)
        out = run_in_thread(lambda: engine.infer(frames))
        assert "error" not in out, out.get("error")
        np.testing.assert_array_equal(out["result"][0], m0)
        np.testing.assert_array_equal(out["result"][1], s0)
    with pytest.raises(EdgeError, match="closed"):
        engine.infer(frames)
