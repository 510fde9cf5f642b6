"""Shared test set-up: the repository root on sys.path (for tests.graphs) and the `gpu` marker
(declared in setup.cfg): skipped where TensorRT is not installed, failed where it is but no
CUDA binding or device can run it (that is a broken box, not a machine without a GPU)."""

import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


_GPU_STATE = []


def gpu_state():
    """("run", ""), ("skip", why) where TensorRT is not installed, or ("fail", why) where it
    is but no CUDA binding and device can run it: gpu tests then fail instead of skipping."""
    if not _GPU_STATE:
        from tests.gpu.compare_trt_ort import gpu_state as state
        _GPU_STATE.append(state())
    return _GPU_STATE[0]


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    state, why = gpu_state()
    if state != "skip":
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU with TensorRT ({why})")
    for item in gpu_items:
        item.add_marker(skip)


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu"):
        state, why = gpu_state()
        if state == "fail":
            pytest.fail(why, pytrace=False)


@pytest.fixture(scope="session")
def padim96(tmp_path_factory):
    """One small PaDiM bundle (96 px, the embedded PA_BDP01_TL category) trained once for the
    session and shared by the runtime tests; a test that changes a bundle copies it first."""
    from tests.helpers import PIPED, edge
    out = tmp_path_factory.mktemp("padim96") / "bundle"
    res = edge("train", "--method", "padim", "--data", os.path.join(PIPED, "PA_BDP01_TL"),
               "--out", out, "--size", "96", "--no-eval")
    assert res.returncode == 0, res.stderr
    return str(out)
