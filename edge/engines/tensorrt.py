"""TensorRT engine: runs a plan built on this device by `edge build`.

Written against the TensorRT 10 and 11 Python API (named tensors: num_io_tensors,
get_tensor_name, set_input_shape, set_tensor_address, execute_async_v3). The module imports
tensorrt and the CUDA back-end only when an engine is made, so `import edge.engines.tensorrt`
works on a box without them.

    engine = TrtEngine.from_bundle(bundle, precision="fp16", batch=4)
    maps, scores = engine.infer(frames)      # frames: N x H x W x 3 uint8, any N

Buffers (page-locked host and device memory for the plan's largest batch) are allocated once;
each call copies the real batch in, sets the input shape, enqueues on the engine's own
stream, copies the outputs back and synchronises. Batches larger than the plan's largest are
run in chunks; batches smaller than its smallest are padded.
"""

import os

import numpy as np

from ..common.errors import EdgeError
from . import Engine
from . import plan_key as pk

INPUT = "frames"
OUTPUTS = ("anomaly_map", "score")
_LOGGERS = {}


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise EdgeError("TensorRT is not installed (on Jetson it comes with JetPack: "
                        "python3-libnvinfer; elsewhere use ONNX Runtime: --engine onnxruntime)") from None
    check_tensorrt_version(trt)
    return trt


MIN_TENSORRT = (10, 3)


def check_tensorrt_version(trt):
    """EdgeError for a TensorRT older than 10.3 (JetPack 6.0 ships 8.6: no named-tensor
    execute_async_v3 with strongly typed networks, and no parser for the graphs' ops)."""
    try:
        major, minor = (int(x) for x in str(trt.__version__).split(".")[:2])
    except ValueError:
        return
    if (major, minor) < MIN_TENSORRT:
        raise EdgeError(f"TensorRT {trt.__version__} is too old: the toolkit needs TensorRT "
                        f"{MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} or newer (JetPack 6.1 or later; "
                        "JetPack 6.0 ships TensorRT 8.6); upgrade JetPack or use --engine onnxruntime")


def _logger(trt):
    """One logger per TensorRT module (TensorRT keeps the first one it is given)."""
    if id(trt) not in _LOGGERS:
        _LOGGERS[id(trt)] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[id(trt)]


def _build_hint(bundle_path, key):
    if key.dla is not None:      # DLA plans have one static batch (min = opt = max)
        batch, dla = str(key.batch_max), f" --dla {key.dla}"
    else:
        batch, dla = (f"1,{key.batch_max}" if key.batch_max > 1 else "1"), ""  # partial batches too
    return f"run `edge build {bundle_path} --precision {key.precision} --batch {batch}{dla}`"


class TrtEngine(Engine):
    name = "tensorrt"

    @classmethod
    def from_bundle(cls, bundle, precision="fp32", batch=1, dla=None, plan=None, **other_engines):
        """The engine for the bundle's plan that matches this GPU, TensorRT version, precision
        and graph, and covers `batch`. Refuses (EdgeError, saying to run `edge build`) when
        there is none. `plan` names a plan file explicitly (it is still checked). Options
        meant for other engines (threads, providers) are ignored."""
        trt = import_tensorrt()
        from .cuda import get_api

        api = get_api()
        want = pk.make_key(trt, api.device_info(), precision, (batch, batch, batch),
                           pk.graph_sha256(bundle, precision), dla)
        if plan is not None:
            why = pk.check_plan(plan, want)
            if why:
                raise EdgeError(f"plan does not fit this device: {'; '.join(why)}; "
                                f"{_build_hint(bundle.path, want)}", plan)
            path = plan
        else:
            path, refused = pk.find_plan(bundle, want)
            if path is None:
                where = (f"{want.gpu} sm{want.cc.replace('.', '')} {want.runtime} "
                         f"{want.trt_version}, {precision}, batch {batch}"
                         + (f", DLA core {want.dla}" if want.dla is not None else ""))
                if refused:
                    first, why = refused[0]
                    detail = (f"; {len(refused)} plan(s) refused, e.g. {os.path.basename(first)}: "
                              f"{'; '.join(why)}")
                else:
                    detail = ""
                raise EdgeError(f"no TensorRT plan for {where}{detail}; "
                                f"{_build_hint(bundle.path, want)}", pk.plans_dir(bundle.path))
        return cls(path, precision=precision, dla=dla, expected_hw=bundle.input_hw, _checked=True)

    def __init__(self, plan_path, precision="fp32", dla=None, expected_hw=None, _checked=False):
        trt = import_tensorrt()
        from .cuda import get_api

        self.trt = trt
        self.api = api = get_api()
        self.precision = precision
        self.plan_path = plan_path
        self._buffers = []
        self.host, self.dev = {}, {}
        self.context = self.engine = self.runtime = self.stream = None
        have, _ = pk.read_sidecar(plan_path)
        # The DLA core the plan was built for (its sidecar says) unless the caller names one.
        self.dla = dla if dla is not None else have.dla
        if not _checked:
            # A plan given directly must still have been built here, for this TensorRT.
            want = pk.make_key(trt, api.device_info(), have.precision,
                               (have.batch_min, have.batch_min, have.batch_max),
                               have.graph_sha256, self.dla)
            why = pk.check_plan(plan_path, want)
            if why:
                raise EdgeError(f"plan does not fit this device: {'; '.join(why)}; "
                                "run `edge build` for this bundle", plan_path)
        try:
            with open(plan_path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise EdgeError(f"cannot read plan: {exc.strerror}", plan_path) from None
        with api.bound():
            self.runtime = trt.Runtime(_logger(trt))
            if self.dla is not None:
                self.runtime.DLA_core = int(self.dla)
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise EdgeError("TensorRT cannot deserialise the plan (built with another TensorRT or "
                                "for another GPU?); run `edge build` for this bundle", plan_path)
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise EdgeError("TensorRT cannot create an execution context (out of GPU memory?)",
                                plan_path)
            self._bind(expected_hw)

    # ---- buffers, once -------------------------------------------------------------------
    def _bind(self, expected_hw):
        trt, eng, api = self.trt, self.engine, self.api
        tensors = {}
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            tensors[name] = (eng.get_tensor_mode(name), tuple(eng.get_tensor_shape(name)),
                             np.dtype(trt.nptype(eng.get_tensor_dtype(name))))
        missing = [n for n in (INPUT,) + OUTPUTS if n not in tensors]
        if missing:
            raise EdgeError(f"plan lacks tensor(s) {', '.join(missing)} (has: {', '.join(tensors)})",
                            self.plan_path)
        if tensors[INPUT][0] != trt.TensorIOMode.INPUT:
            raise EdgeError(f"plan tensor '{INPUT}' is not an input", self.plan_path)
        pmin, _, pmax = eng.get_tensor_profile_shape(INPUT, 0)
        self.min_batch, self.max_batch = int(pmin[0]), int(pmax[0])
        in_shape = tensors[INPUT][1]
        self.hw = (int(in_shape[1]), int(in_shape[2]))
        if expected_hw is not None and tuple(expected_hw) != self.hw:
            raise EdgeError(f"plan input is {self.hw[0]}x{self.hw[1]} but the manifest says "
                            f"{expected_hw[0]}x{expected_hw[1]}; run `edge build` again", self.plan_path)
        self.stream = api.Stream()
        self.host, self.dev, self.item_bytes = {}, {}, {}
        for name in (INPUT,) + OUTPUTS:
            _, shape, dtype = tensors[name]
            full = (self.max_batch,) + tuple(int(d) for d in shape[1:])
            if any(d < 0 for d in full):
                raise EdgeError(f"plan tensor '{name}' has a dynamic dimension other than the "
                                f"batch: {shape}", self.plan_path)
            host = api.pagelocked_empty(full, dtype)
            dev = api.DeviceBuffer(host.nbytes)
            self._buffers.append((host, dev))
            self.host[name], self.dev[name] = host, dev
            self.item_bytes[name] = host.nbytes // self.max_batch
            if not self.context.set_tensor_address(name, dev.ptr):
                raise EdgeError(f"TensorRT refused the address of tensor '{name}'", self.plan_path)
        # Any other outputs a graph may carry still need somewhere to go.
        for name, (mode, shape, dtype) in tensors.items():
            if name in self.host or mode != trt.TensorIOMode.OUTPUT:
                continue
            full = tuple(self.max_batch if d < 0 else int(d) for d in shape)
            dev = api.DeviceBuffer(int(np.prod(full)) * dtype.itemsize)
            self._buffers.append((None, dev))
            self.context.set_tensor_address(name, dev.ptr)

    # ---- inference -----------------------------------------------------------------------
    def infer(self, frames):
        """Callable from any thread (one call at a time): the CUDA context is made current on
        the calling thread for the call."""
        if self.context is None:
            raise EdgeError("the TensorRT engine is closed", self.plan_path)
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        h, w = self.hw
        if frames.ndim != 4 or frames.shape[1:] != (h, w, 3) or frames.dtype != np.uint8:
            raise EdgeError(f"frames must be N x {h} x {w} x 3 uint8 (got {frames.shape} "
                            f"{frames.dtype})")
        maps, scores = [], []
        with self.api.bound():
            for start in range(0, len(frames), self.max_batch):
                m, s = self._run(frames[start:start + self.max_batch])
                maps.append(m)
                scores.append(s)
        if not maps:
            return np.zeros((0, h, w), np.float32), np.zeros((0,), np.float32)
        return np.concatenate(maps), np.concatenate(scores)

    def _run(self, chunk):
        n = len(chunk)
        run_n = max(n, self.min_batch)
        host_in = self.host[INPUT]
        host_in[:n] = chunk
        if run_n > n:
            host_in[n:run_n] = 0
        api, stream = self.api, self.stream
        api.htod_async(self.dev[INPUT], host_in, stream, nbytes=run_n * self.item_bytes[INPUT])
        if not self.context.set_input_shape(INPUT, (run_n,) + host_in.shape[1:]):
            raise EdgeError(f"TensorRT refused batch {run_n} (plan covers "
                            f"{self.min_batch}-{self.max_batch})", self.plan_path)
        if not self.context.execute_async_v3(stream.handle):
            raise EdgeError("TensorRT execution failed (see the TensorRT log above)", self.plan_path)
        for name in OUTPUTS:
            api.dtoh_async(self.host[name], self.dev[name], stream,
                           nbytes=run_n * self.item_bytes[name])
        stream.synchronize()
        amap = np.array(self.host["anomaly_map"][:n], dtype=np.float32)
        score = np.array(self.host["score"][:n], dtype=np.float32).reshape(n)
        return amap, score

    def close(self):
        """Free the buffers and drop every reference to them and to the engine, so that a
        later infer() is refused instead of touching freed memory. Safe to call twice."""
        api = getattr(self, "api", None)
        if api is None:
            return
        with api.bound():
            if self.stream is not None:
                try:
                    self.stream.synchronize()
                except Exception:
                    pass
            buffers, self._buffers = self._buffers, []
            self.host, self.dev = {}, {}
            self.context = None
            self.engine = None
            self.runtime = None
            for host, dev in buffers:
                dev.free()
                if host is not None:
                    api.free_host(host)
            if self.stream is not None:
                self.stream.close()
                self.stream = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
