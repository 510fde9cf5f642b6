"""Which of ONNX Runtime's integer kernel families a CPU gets, from the CPU's own report.

Standard library and numpy only, with nothing else of the project imported: scripts/kernel_child.py
imports it inside emulated CPUs (qemu-user) and sysroots that have numpy and onnxruntime only.

The features come from numpy's runtime detection (cpuid on x86, the auxiliary vector on Arm),
so they are those of the CPU the process runs on, emulated or not. /proc/cpuinfo is read only
where numpy has no feature table, and for AVX-VNNI (which numpy does not report) only where it
agrees with numpy on the features both know: qemu-user passes the host's /proc/cpuinfo
through, so under `qemu-x86_64 -cpu Haswell` on an AVX-512 VNNI host it describes the host.
"""

import platform

# numpy's names -> /proc/cpuinfo's, for the features cpu_kernels looks at
_NUMPY_NAMES = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni",
                "FMA3": "fma", "ASIMD": "asimd", "ASIMDDP": "asimddp", "AVX512VL": "avx512vl"}


def _numpy_features():
    """{cpuinfo name: bool} from numpy's runtime dispatch table, or None where numpy has none."""
    table = None
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            table = __import__(module, fromlist=["__cpu_features__"]).__cpu_features__
            break
        except (ImportError, AttributeError):
            continue
    if not table:
        return None
    return {_NUMPY_NAMES[k]: bool(v) for k, v in table.items() if k in _NUMPY_NAMES}


def _cpuinfo_flags(path="/proc/cpuinfo"):
    flags = set()
    try:
        with open(path) as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    flags |= set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return flags


def cpu_features():
    """The set of feature names (as /proc/cpuinfo spells them) of the CPU this process runs on,
    and where they came from: ({"avx2", "avx512_vnni", ...}, "numpy" | "numpy+cpuinfo" | "cpuinfo" | "none")."""
    known = _numpy_features()
    flags = _cpuinfo_flags()
    if known is None:
        return (flags or set()), ("cpuinfo" if flags is not None else "none")
    features = {k for k, v in known.items() if v}
    # AVX-VNNI (VEX-coded, no AVX-512) is not in numpy's table: take it from /proc/cpuinfo only
    # where that file describes this CPU, i.e. agrees with numpy on every feature both report.
    if flags and "avx_vnni" in flags and all((k in flags) == v for k, v in known.items()):
        return features | {"avx_vnni"}, "numpy+cpuinfo"
    return features, "numpy"


def cpu_kernels(machine=None, features=None):
    """Which of ONNX Runtime's integer kernel families this CPU gets, in words, e.g.
    "x86_64 AVX2, no VNNI (u8s8 pair sums in 16 bits)". `machine`: platform.machine() by default;
    `features`: feature names as /proc/cpuinfo spells them (default: cpu_features())."""
    machine = machine or platform.machine()
    if features is None:
        features, source = cpu_features()
        if source == "none":
            return machine
    flags = set(features)
    if machine in ("x86_64", "AMD64"):
        if "avx512_vnni" in flags:
            return f"{machine} AVX-512 VNNI"
        if "avx_vnni" in flags:
            return f"{machine} AVX-VNNI"
        if "avx512bw" in flags:
            return f"{machine} AVX-512, no VNNI (u8s8 pair sums in 16 bits)"
        if "avx2" in flags:
            return f"{machine} AVX2, no VNNI (u8s8 pair sums in 16 bits)"
        return f"{machine} SSE"
    if machine in ("aarch64", "arm64"):
        return f"{machine} " + ("with dot product (SDOT/UDOT)" if "asimddp" in flags else "NEON, no dot product")
    return machine
