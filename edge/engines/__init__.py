"""Inference engines behind one interface: frames (N x H x W x 3 uint8) in, (maps, scores) out.

    engine = open_engine(bundle, "onnxruntime", precision="fp32")
    maps, scores = engine.infer(frames)

The engine modules import their runtimes lazily, so a box without TensorRT can still use
ONNX Runtime and the other way round."""

import os

from ..common.errors import EdgeError
from ..common.names import ENGINE_KINDS

ENGINES = ENGINE_KINDS


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


def check_input_size(bundle, shape, graph_path):
    """The graph's fixed input height and width (N x H x W x C) must be the manifest's."""
    h, w = bundle.input_hw
    if len(shape) != 4:
        raise EdgeError(f"graph input has {len(shape)} dimensions, not N x H x W x C", graph_path)
    at = 2 if bundle.manifest["input"].get("layout") == "NCHW" else 1
    for key, want, have in (("height", h, shape[at]), ("width", w, shape[at + 1])):
        if isinstance(have, int) and have != want:
            raise EdgeError(f"manifest input.{key} is {want} but the graph takes {have}",
                            os.path.join(bundle.path, "manifest.yaml"))


def resolve_kind(kind):
    """The engine `kind` names: "auto" is TensorRT where it and a GPU are present, else ONNX Runtime."""
    if kind == "auto":
        return "tensorrt" if tensorrt_available() else "onnxruntime"
    return kind


def open_engine(bundle, kind="auto", precision="fp32", batch=1, **options):
    kind = resolve_kind(kind)
    if kind == "onnxruntime":
        from .onnxrt import OrtEngine
        options.pop("dla", None)        # a DLA core means nothing to ONNX Runtime
        engine = OrtEngine(bundle.graph_path(precision, "onnxruntime"), precision=precision, **options)
        try:
            check_input_size(bundle, engine.session.get_inputs()[0].shape, engine.graph_path)
        except BaseException:
            engine.close()
            raise
        return engine
    if kind == "tensorrt":
        from .tensorrt import TrtEngine
        return TrtEngine.from_bundle(bundle, precision=precision, batch=batch, **options)
    raise EdgeError(f"unknown engine '{kind}' (choose from: auto, {', '.join(ENGINES)})")
