"""The GPU checks must fail, not skip, on a box where TensorRT is installed but nothing can run
it (no CUDA binding, one for another CUDA major, no device): such a box would not start the
service. Here a stand-in `tensorrt` module makes this machine such a box; without it, the
checks skip as before (this machine has no TensorRT)."""

import os
import subprocess
import sys

import pytest

from tests import graphs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def broken_box(tmp_path):
    """Environment with an importable `tensorrt` and no usable CUDA binding."""
    fake = tmp_path / "fake_site"
    fake.mkdir()
    (fake / "tensorrt.py").write_text('__version__ = "10.3.0.30"\n')
    # pycuda and cuda-python made unimportable whatever this machine has
    (fake / "pycuda").mkdir()
    (fake / "pycuda" / "__init__.py").write_text('raise ImportError("pycuda: no libcuda.so here")\n')
    (fake / "cuda").mkdir()
    (fake / "cuda" / "__init__.py").write_text('raise ImportError("cuda-python: built for CUDA 13")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), REPO]))
    return env


def _python():
    return sys.executable


def test_gpu_tests_fail_where_tensorrt_cannot_run(broken_box):
    test = "tests/test_cuda_threads.py::test_real_engine_infers_on_another_thread"
    proc = subprocess.run([_python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                          cwd=REPO, env=broken_box, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and ("1 error" in out or "1 failed" in out), out[-2000:]
    assert "TensorRT 10.3.0.30 is installed but nothing can run it" in out


def test_gpu_tests_skip_without_tensorrt():
    test = "tests/test_cuda_threads.py::test_real_engine_infers_on_another_thread"
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([_python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", test],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    assert proc.returncode == 0 and "1 skipped" in out, out[-2000:]


def test_run_gpu_checks_fails_where_tensorrt_cannot_run(broken_box, tmp_path):
    bundle = graphs.make_bundle(str(tmp_path / "b"))
    script = os.path.join(REPO, "tests", "gpu", "run_gpu_checks.sh")
    env = dict(broken_box, PY=_python())
    proc = subprocess.run(["bash", script, bundle], env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "GPU checks FAILED" in out and "nothing can run it" in out and "skipped" not in out
    # and the comparison itself fails the same way
    proc = subprocess.run([_python(), "-m", "tests.gpu.compare_trt_ort", bundle], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "FAILED" in proc.stdout


def test_run_gpu_checks_skips_without_tensorrt(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    bundle = graphs.make_bundle(str(tmp_path / "b"))
    script = os.path.join(REPO, "tests", "gpu", "run_gpu_checks.sh")
    proc = subprocess.run(["bash", script, bundle], env=dict(os.environ, PY=_python()),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "GPU checks skipped" in proc.stdout, proc.stdout + proc.stderr


def test_gpu_scripts_are_valid():
    script = os.path.join(REPO, "tests", "gpu", "run_gpu_checks.sh")
    subprocess.run(["bash", "-n", script], check=True, timeout=30)
    import shutil
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", script], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout
    proc = subprocess.run([_python(), "-m", "tests.gpu.service_checks", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "threads" in proc.stdout


def test_service_run_check_itself(tmp_path):
    """The `edge run` check of run_gpu_checks.sh, tried here on ONNX Runtime: config written
    like the service's, every frame decided."""
    bundle = graphs.make_bundle(str(tmp_path / "b"))
    proc = subprocess.run([_python(), "-m", "tests.gpu.service_checks", "run", bundle, "--engine",
                           "onnxruntime", "--precision", "fp32", "--batch", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "run: ok" in proc.stdout, proc.stdout + proc.stderr
    assert "summary: 12 frames decided of 12 captured" in proc.stdout
