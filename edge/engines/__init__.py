"""Inference engines behind one interface: frames (N x H x W x 3 uint8) in, (maps, scores) out.

    engine = open_engine(bundle, "onnxruntime", precision="fp32")
    maps, scores = engine.infer(frames)

The engine modules import their runtimes lazily, so a box without TensorRT can still use
ONNX Runtime and the other way round."""

from ..common.errors import EdgeError

ENGINES = ("onnxruntime", "tensorrt")


class Engine:
    name = "base"
    max_batch = 1

    def infer(self, frames):  # pragma: no cover - interface
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tensorrt_available():
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    from .cuda import cuda_available
    return cuda_available()


def open_engine(bundle, kind="auto", precision="fp32", batch=1, **options):
    if kind == "auto":
        kind = "tensorrt" if tensorrt_available() else "onnxruntime"
    if kind == "onnxruntime":
        from .onnxrt import OrtEngine
        options.pop("dla", None)        # a DLA core means nothing to ONNX Runtime
        return OrtEngine(bundle.graph_path(precision, "onnxruntime"), precision=precision, **options)
    if kind == "tensorrt":
        from .tensorrt import TrtEngine
        return TrtEngine.from_bundle(bundle, precision=precision, batch=batch, **options)
    raise EdgeError(f"unknown engine '{kind}' (choose from: auto, {', '.join(ENGINES)})")
