"""The few CUDA calls the TensorRT engine needs, behind one small interface.

Two back-ends, tried in this order, both imported only when first used:
  pycuda        (JetPack boxes often have it; `pip install pycuda` builds against the driver)
  cuda-python   (`from cuda.bindings import runtime as cudart`; the old `from cuda import
                 cudart` is gone in cuda-bindings 13)

Both work in the device's primary context, the one TensorRT's runtime uses.

    if cuda_available():
        api = get_api()
        name, (major, minor) = api.device_info()
        stream = api.Stream()
        host = api.pagelocked_empty((4, 256, 256, 3), np.uint8)
        dev = api.DeviceBuffer(host.nbytes)
        api.htod_async(dev, host, stream); stream.synchronize()
"""

import atexit
import ctypes

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

        drv.init()
        if drv.Device.count() == 0:
            raise RuntimeError("no CUDA device")
        self.drv = drv
        self.dev = drv.Device(device)
        # The primary context is the one the CUDA runtime (and so TensorRT) uses.
        self.ctx = self.dev.retain_primary_context()
        self.ctx.push()
        atexit.register(self._pop)

        class Stream:
            def __init__(self):
                self._s = drv.Stream()
                self.handle = int(self._s.handle)

            def synchronize(self):
                self._s.synchronize()

            def close(self):
                self._s = None

        class DeviceBuffer:
            def __init__(self, nbytes):
                self._mem = drv.mem_alloc(max(int(nbytes), 1))
                self.ptr = int(self._mem)
                self.nbytes = int(nbytes)

            def free(self):
                if self._mem is not None:
                    self._mem.free()
                    self._mem = None

        self.Stream = Stream
        self.DeviceBuffer = DeviceBuffer

    def _pop(self):
        try:
            self.ctx.pop()
        except Exception:
            pass

    def device_count(self):
        return self.drv.Device.count()

    def device_info(self):
        return self.dev.name(), tuple(self.dev.compute_capability())

    def pagelocked_empty(self, shape, dtype):
        return self.drv.pagelocked_empty(shape, dtype)

    def free_host(self, array):
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def htod_async(self, dst, host, stream, nbytes=None):
        nbytes = host.nbytes if nbytes is None else nbytes
        self.drv.memcpy_htod_async(dst.ptr, host.reshape(-1).view(np.uint8)[:nbytes], stream._s)

    def dtoh_async(self, host, src, stream, nbytes=None):
        nbytes = host.nbytes if nbytes is None else nbytes
        self.drv.memcpy_dtoh_async(host.reshape(-1).view(np.uint8)[:nbytes], src.ptr, stream._s)


# ---- cuda-python -----------------------------------------------------------------------
class _CudaPython(_Api):
    label = "cuda-python"

    def __init__(self, device=0):
        from cuda.bindings import runtime as cudart

        self.rt = cudart
        self.device = device
        n = self.device_count()
        if n == 0:
            raise RuntimeError("no CUDA device")
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        rt = cudart
        check = self._check

        class Stream:
            def __init__(self):
                self._s = check(rt.cudaStreamCreate(), "cudaStreamCreate")
                self.handle = int(self._s)

            def synchronize(self):
                check(rt.cudaStreamSynchronize(self._s), "cudaStreamSynchronize")

            def close(self):
                if self._s is not None:
                    rt.cudaStreamDestroy(self._s)
                    self._s = None

        class DeviceBuffer:
            def __init__(self, nbytes):
                self.ptr = int(check(rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
                self.nbytes = int(nbytes)

            def free(self):
                if self.ptr:
                    rt.cudaFree(self.ptr)
                    self.ptr = 0

        self.Stream = Stream
        self.DeviceBuffer = DeviceBuffer

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
        ptr = int(self._check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        buf = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
        arr = np.frombuffer(buf, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        self._pinned = getattr(self, "_pinned", {})
        self._pinned[id(arr)] = ptr
        return arr

    def free_host(self, array):
        ptr = getattr(self, "_pinned", {}).pop(id(array), None)
        if ptr:
            self.rt.cudaFreeHost(ptr)

    def htod_async(self, dst, host, stream, nbytes=None):
        nbytes = host.nbytes if nbytes is None else nbytes
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, host.ctypes.data, nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                            stream._s), "cudaMemcpyAsync (host to device)")

    def dtoh_async(self, host, src, stream, nbytes=None):
        nbytes = host.nbytes if nbytes is None else nbytes
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, src.ptr, nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                            stream._s), "cudaMemcpyAsync (device to host)")
