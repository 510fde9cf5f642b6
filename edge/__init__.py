"""Line-side runtime: bundles, engines, capture, decisions, outputs, records.

Nothing in this package imports torch: it must run on a Jetson box (or any small
x86 box) that has only numpy, OpenCV, PyYAML and an inference engine.
"""

__version__ = "0.1.0"     # the one place; setup.cfg reads it (version = attr: edge.__version__)

# What `edge --version` reports besides the toolkit: per runtime, the distributions to look
# for, then the module to ask when none has metadata (JetPack installs TensorRT from apt).
_RUNTIMES = (("ONNX Runtime", ("onnxruntime", "onnxruntime-gpu"), "onnxruntime"),
             ("TensorRT", ("tensorrt", "tensorrt-rtx"), "tensorrt"),
             ("CUDA binding", ("pycuda", "cuda-python", "cuda-bindings"), "pycuda"))


def _module_version(name):
    import importlib
    import importlib.util
    try:
        if importlib.util.find_spec(name) is None:
            return None
        mod = importlib.import_module(name)
    except Exception:
        return None
    return str(getattr(mod, "__version__", None) or getattr(mod, "VERSION_TEXT", None) or "unknown version")


def version_report():
    """`lineside-ad X` and one line per runtime: the versions installed, or "not installed"."""
    from importlib import metadata
    lines = [f"lineside-ad {__version__}"]
    for label, dists, module in _RUNTIMES:
        found = []
        for dist in dists:
            try:
                found.append(f"{metadata.version(dist)} ({dist})")
            except metadata.PackageNotFoundError:
                pass
        if not found and _module_version(module):
            found.append(f"{_module_version(module)} ({module})")
        lines.append(f"{label}: {', '.join(found) if found else 'not installed'}")
    return "\n".join(lines)
