"""Shared test set-up: the repository root on sys.path (for tests.graphs) and the `gpu` marker
(declared in setup.cfg) skipped where there is no CUDA device or no TensorRT."""

import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def _gpu_ready():
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False, "TensorRT is not installed"
    from edge.engines.cuda import cuda_available

    if not cuda_available():
        return False, "no CUDA device"
    return True, ""


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    ok, why = _gpu_ready()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU with TensorRT ({why})")
    for item in gpu_items:
        item.add_marker(skip)
