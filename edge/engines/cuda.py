"""The few CUDA calls the TensorRT engine needs, behind one small interface.

Two back-ends, tried in this order, both imported only when first used:
  pycuda        (JetPack boxes often have it; `pip install pycuda` builds against the driver)
  cuda-python   (`from cuda.bindings import runtime as cudart`; the old `from cuda import
                 cudart` is gone in cuda-bindings 13)

Both work in the device's primary context, the one TensorRT's runtime uses.

A CUDA context is current on one CPU thread at a time, and pycuda's calls go to the driver
directly: they fail ("invalid device context") on a thread where no context is current, such
as the pipeline's inference thread when the engine was opened on the main thread. So every
call here makes the primary context current on the calling thread for its duration
(`api.bound()`, re-entrant; a caller wraps a whole sequence of calls in it to do this once):

    if cuda_available():
        api = get_api()
        name, (major, minor) = api.device_info()
        with api.bound():                      # any thread
            stream = api.Stream()
            host = api.pagelocked_empty((4, 256, 256, 3), np.uint8)
            dev = api.DeviceBuffer(host.nbytes)
            api.htod_async(dev, host, stream); stream.synchronize()
"""

import contextlib
import ctypes
import threading

import numpy as np

from ..common.errors import EdgeError

_API = None


def cuda_available():
    """True when a CUDA back-end imports and sees at least one device. Never raises."""
    try:
        return get_api().device_count() > 0
    except Exception:
        return False


def get_api(device=0):
    """The first back-end that imports and initialises; EdgeError when none does."""
    global _API
    if _API is not None:
        return _API
    reasons = []
    for cls in (_Pycuda, _CudaPython):
        try:
            _API = cls(device)
            return _API
        except Exception as exc:  # ImportError, driver missing, no device
            reasons.append(f"{cls.label}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    raise EdgeError("no usable CUDA (" + "; ".join(reasons) + "); install pycuda or cuda-python "
                    "and check the NVIDIA driver")


class _Api:
    label = "base"

    def __init__(self):
        self._local = threading.local()

    @contextlib.contextmanager
    def bound(self):
        """The device's context is current on the calling thread inside this block
        (re-entrant: only the outermost level binds and releases)."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._bind_thread()
        self._local.depth = depth + 1
        try:
            yield self
        finally:
            self._local.depth = depth
            if depth == 0:
                self._release_thread()

    def _bind_thread(self):
        raise NotImplementedError

    def _release_thread(self):
        pass

    def device_count(self):
        raise NotImplementedError

    def device_info(self):
        """(name, (major, minor)) of the device in use."""
        raise NotImplementedError


# ---- pycuda ----------------------------------------------------------------------------
class _Pycuda(_Api):
    label = "pycuda"

    def __init__(self, device=0):
        import pycuda.driver as drv

        super().__init__()
        drv.init()
        if drv.Device.count() == 0:
            raise RuntimeError("no CUDA device")
        self.drv = drv
        self.dev = drv.Device(device)
        # The primary context is the one the CUDA runtime (and so TensorRT) uses. It is not
        # pushed here: bound() makes it current on whichever thread makes a call.
        self.ctx = self.dev.retain_primary_context()
        api = self

        class Stream:
            def __init__(self):
                with api.bound():
                    self._s = drv.Stream()
                # pycuda gives the CUstream handle as an int already.
                self.handle = int(self._s.handle)

            def synchronize(self):
                with api.bound():
                    self._s.synchronize()

            def close(self):
                self._s = None

        class DeviceBuffer:
            def __init__(self, nbytes):
                with api.bound():
                    self._mem = drv.mem_alloc(max(int(nbytes), 1))
                self.ptr = int(self._mem)
                self.nbytes = int(nbytes)

            def free(self):
                if self._mem is not None:
                    with api.bound():
                        self._mem.free()
                    self._mem = None
                    self.ptr = 0

        self.Stream = Stream
        self.DeviceBuffer = DeviceBuffer

    def _bind_thread(self):
        self.ctx.push()

    def _release_thread(self):
        self.drv.Context.pop()

    def device_count(self):
        return self.drv.Device.count()

    def device_info(self):
        return self.dev.name(), tuple(self.dev.compute_capability())

    def pagelocked_empty(self, shape, dtype):
        with self.bound():
            return self.drv.pagelocked_empty(shape, dtype)

    def free_host(self, array):
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            with self.bound():
                base.free()

    def htod_async(self, dst, host, stream, nbytes=None):
        nbytes = host.nbytes if nbytes is None else nbytes
        with self.bound():
            self.drv.memcpy_htod_async(dst.ptr, host.reshape(-1).view(np.uint8)[:nbytes], stream._s)

    def dtoh_async(self, host, src, stream, nbytes=None):
        nbytes = host.nbytes if nbytes is None else nbytes
        with self.bound():
            self.drv.memcpy_dtoh_async(host.reshape(-1).view(np.uint8)[:nbytes], src.ptr, stream._s)


# ---- cuda-python -----------------------------------------------------------------------
def native_handle(obj):
    """The address a CUDA object (a cudaStream_t, say) wraps, as an int. cuda-bindings
    deprecates int(obj) for this in favour of utils.get_cuda_native_handle (12.9+); older
    bindings only have int()."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        get_cuda_native_handle = None
    if get_cuda_native_handle is not None:
        return int(get_cuda_native_handle(obj))
    return int(obj)


class _CudaPython(_Api):
    label = "cuda-python"

    def __init__(self, device=0):
        from cuda.bindings import runtime as cudart

        super().__init__()
        self.rt = cudart
        self.device = device
        self._pinned = {}
        n = self.device_count()
        if n == 0:
            raise RuntimeError("no CUDA device")
        rt = cudart
        check = self._check
        api = self

        class Stream:
            def __init__(self):
                with api.bound():
                    self._s = check(rt.cudaStreamCreate(), "cudaStreamCreate")
                self.handle = native_handle(self._s)

            def synchronize(self):
                with api.bound():
                    check(rt.cudaStreamSynchronize(self._s), "cudaStreamSynchronize")

            def close(self):
                if self._s is not None:
                    with api.bound():
                        rt.cudaStreamDestroy(self._s)
                    self._s = None

        class DeviceBuffer:
            def __init__(self, nbytes):
                with api.bound():
                    self.ptr = int(check(rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
                self.nbytes = int(nbytes)

            def free(self):
                if self.ptr:
                    with api.bound():
                        rt.cudaFree(self.ptr)
                    self.ptr = 0

        self.Stream = Stream
        self.DeviceBuffer = DeviceBuffer

    def _bind_thread(self):
        # The runtime API keeps the current device per CPU thread (device 0 unless set).
        if getattr(self._local, "device_set", False):
            return
        self._check(self.rt.cudaSetDevice(self.device), "cudaSetDevice")
        self._local.device_set = True

    def _check(self, result, what):
        """cuda-python returns (err, value...) tuples; raise on error, return the value."""
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(err) != 0:
            _, msg = self.rt.cudaGetErrorString(err)
            raise RuntimeError(f"{what} failed: CUDA error {int(err)} "
                               f"({msg.decode() if isinstance(msg, bytes) else msg})")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def device_count(self):
        return self._check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")

    def device_info(self):
        prop = self._check(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = prop.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return name, (int(prop.major), int(prop.minor))

    def pagelocked_empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        with self.bound():
            ptr = int(self._check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        buf = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
        arr = np.frombuffer(buf, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        self._pinned[id(arr)] = ptr
        return arr

    def free_host(self, array):
        ptr = self._pinned.pop(id(array), None)
        if ptr:
            with self.bound():
                self.rt.cudaFreeHost(ptr)

    def htod_async(self, dst, host, stream, nbytes=None):
        nbytes = host.nbytes if nbytes is None else nbytes
        with self.bound():
            self._check(self.rt.cudaMemcpyAsync(dst.ptr, host.ctypes.data, nbytes,
                                                self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                                stream._s), "cudaMemcpyAsync (host to device)")

    def dtoh_async(self, host, src, stream, nbytes=None):
        nbytes = host.nbytes if nbytes is None else nbytes
        with self.bound():
            self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, src.ptr, nbytes,
                                                self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                                stream._s), "cudaMemcpyAsync (device to host)")
