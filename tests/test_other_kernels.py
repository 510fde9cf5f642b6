"""ONNX Runtime's other integer kernel families, run on this host under qemu-user
(scripts/emulation.py, scripts/kernel_child.py): the reason for the 7-bit weights of
model.int8.ort.onnx shown on the AVX2 kernels whatever CPU runs the tests, and the Arm
kernels exact where the aarch64 sysroot is cached. The bundle-sized measurement is
scripts/other_kernels.py (docs/precision.md, "How each kernel family was run")."""

import json
import os

import numpy as np
import onnx
import pytest

from convert import cpu
from convert.cpu import cpu_kernels
from scripts import emulation
from tests.test_qdq_float import _matmul_integer

CHILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "kernel_child.py")


def _child(runner, model, a, tmp_path, tag):
    graph, frames, out = tmp_path / f"{tag}.onnx", tmp_path / f"{tag}.npy", tmp_path / f"{tag}.npz"
    onnx.save(model, str(graph))
    np.save(frames, a)
    res = runner.run([CHILD, str(graph), str(frames), str(out), "--batch", str(len(a))], timeout=600,
                     capture_output=True, text=True)
    assert res.returncode == 0, f"{runner.how}: exit {res.returncode}\n{res.stderr[-2000:]}"
    with np.load(out) as z:
        return z["scores"], json.loads(str(z["info"]))


def _weights(w):
    """u8 activations at 255 (a few lower) against s8 weights of magnitude w, the columns
    alternately +w and -w: every pair of products has one sign, so it saturates both ways."""
    rng = np.random.default_rng(0)
    a = np.full((4, 64), 255, np.uint8)
    a[:, ::5] = rng.integers(200, 256, (4, 13))
    b = np.full((64, 8), w, np.int8)
    b[:, 1::2] = -w
    return a, b


def test_cpu_kernels_from_features():
    assert cpu_kernels("x86_64", {"avx2", "fma"}) == "x86_64 AVX2, no VNNI (u8s8 pair sums in 16 bits)"
    assert cpu_kernels("x86_64", {"avx2", "avx512f", "avx512bw"}).startswith("x86_64 AVX-512, no VNNI")
    assert cpu_kernels("x86_64", {"avx2", "avx512bw", "avx512_vnni"}) == "x86_64 AVX-512 VNNI"
    assert cpu_kernels("x86_64", {"avx2", "avx_vnni"}) == "x86_64 AVX-VNNI"
    assert cpu_kernels("aarch64", {"asimd", "asimddp"}) == "aarch64 with dot product (SDOT/UDOT)"
    assert cpu_kernels("aarch64", {"asimd"}) == "aarch64 NEON, no dot product"


def test_cpuinfo_only_where_it_describes_this_cpu(monkeypatch):
    """qemu-user shows the host's /proc/cpuinfo: its avx_vnni counts only where the file agrees
    with numpy's cpuid on the features both report."""
    haswell = {"avx2": True, "fma": True, "avx512f": False, "avx512bw": False, "avx512_vnni": False}
    host = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni"}
    monkeypatch.setattr(cpu, "_numpy_features", lambda: haswell)
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: host)
    assert cpu.cpu_features() == ({"avx2", "fma"}, "numpy")
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: {"avx2", "fma", "avx_vnni"})     # an Alder Lake
    assert cpu.cpu_features() == ({"avx2", "fma", "avx_vnni"}, "numpy+cpuinfo")
    monkeypatch.setattr(cpu, "_numpy_features", lambda: None)                         # no numpy table
    assert cpu.cpu_features()[1] == "cpuinfo"


def test_eight_bit_weights_saturate_on_the_avx2_kernels_seven_do_not(tmp_path):
    """Under `qemu-x86_64 -cpu Haswell` ONNX Runtime takes its AVX2 u8s8 GEMM (VPMADDUBSW: two
    products summed in int16 with saturation): 2 x 255 x 127 = 64770 clamps to 32767, so the
    8-bit sums come out near 32 x 32767; 2 x 255 x 63 = 32130 fits and the 7-bit ones are exact."""
    runner = emulation.x86("Haswell")
    if runner is None:
        pytest.skip("qemu-x86_64 not installed (Debian package qemu-user, .ci/apt-packages.txt)")
    for w, saturates in ((127, True), (63, False)):
        a, b = _weights(w)
        exact = a.astype(np.int64) @ b.astype(np.int64)
        got, info = _child(runner, _matmul_integer(a, b), a, tmp_path, f"w{w}")
        assert info["kernels"] == "x86_64 AVX2, no VNNI (u8s8 pair sums in 16 bits)", info
        if saturates:
            assert (np.abs(got) < np.abs(exact)).all() and (np.abs(got) <= 32 * 32768).all(), (got, exact)
        else:
            assert (got == exact).all(), (got, exact)


@pytest.mark.parametrize("cpu_model", list(emulation.ARM_CPUS))
def test_arm_kernels_do_not_saturate(cpu_model, tmp_path):
    runner = emulation.arm64(cpu_model)
    if runner is None:
        pytest.skip(f"no aarch64 sysroot in {emulation.SYSROOT} (python -m scripts.emulation --build-arm64) "
                    "or no qemu-aarch64")
    a, b = _weights(127)
    got, info = _child(runner, _matmul_integer(a, b), a, tmp_path, cpu_model)
    dot = "with dot product" if cpu_model == "neoverse-n1" else "no dot product"
    assert info["machine"] == "aarch64" and dot in info["kernels"], info
    assert (got == a.astype(np.int64) @ b.astype(np.int64)).all()
