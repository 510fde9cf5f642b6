#!/usr/bin/env python3
"""The JetPack releases the line-side runtime supports, and what it needs from each: the one
table that deploy/install.sh, deploy/docker/Dockerfile and setup.cfg's jetson extras take
their pins from (tests/test_jetpack.py checks setup.cfg against it). Standard library only:
it runs before anything is installed.

    python3 deploy/jetpack.py pins [--l4t 36.4.3]   # pip requirements for this box (or that L4T)
    python3 deploy/jetpack.py check                 # this box against the table; exit 1 on a mismatch
    python3 deploy/jetpack.py table                 # the table, as text

The L4T release is read from /etc/nv_tegra_release ("# R36 (release), REVISION: 4.3, ...").
Versions are those NVIDIA lists for each JetPack; `verified` says which rows were checked
against NVIDIA's release notes, the rest follow NVIDIA's announcements and must be confirmed
on a box (`check` does that).
"""

import argparse
import os
import re
import sys

NV_TEGRA_RELEASE = "/etc/nv_tegra_release"

# The CUDA binding follows the CUDA major of the box: cuda-python 13 is built for the CUDA 13
# driver and does not load on JetPack 6's CUDA 12.6. 12.6.1 is the first with the
# cuda.bindings module the runtime imports. numpy stays below 2: JetPack's own cv2 is built
# against numpy 1.x, and a numpy 2 from PyPI in the venv would break its import.
PINS = {
    12: ["cuda-python>=12.6.1,<13", "numpy<2"],
    13: ["cuda-python>=13,<14", "numpy<2"],
}

# jetpack, l4t (prefix matched against the box's release), ubuntu, python, cuda, tensorrt,
# cudnn, numpy (Ubuntu's python3-numpy), opencv (JetPack's nvidia-opencv), supported.
RELEASES = [
    dict(jetpack="6.0", l4t="36.3", ubuntu="22.04", python="3.10", cuda="12.2", tensorrt="8.6.2",
         cudnn="8.9.4", numpy="1.21.5", opencv="4.8.0", supported=False, verified=True,
         note="TensorRT 8.6 has no strongly typed networks and misses ops the graphs use; "
              "upgrade to JetPack 6.1 or later"),
    dict(jetpack="6.1", l4t="36.4.0", ubuntu="22.04", python="3.10", cuda="12.6", tensorrt="10.3.0",
         cudnn="9.3.0", numpy="1.21.5", opencv="4.8.0", supported=True, verified=True, note=""),
    dict(jetpack="6.2", l4t="36.4", ubuntu="22.04", python="3.10", cuda="12.6", tensorrt="10.3.0",
         cudnn="9.3.0", numpy="1.21.5", opencv="4.8.0", supported=True, verified=True,
         note="6.2 is L4T 36.4.3, 6.2.1 is 36.4.4: the same CUDA and TensorRT as 6.1"),
    dict(jetpack="7.x", l4t="38", ubuntu="24.04", python="3.12", cuda="13.0", tensorrt="10.13",
         cudnn="9.12", numpy="1.26.4", opencv="4.x", supported=True, verified=False,
         note="JetPack 7.0 (L4T 38.2) is for Jetson Thor; later 7.x releases bring TensorRT 11. "
              "Versions follow NVIDIA's announcements: confirm with `jetpack.py check`"),
]


class JetpackError(Exception):
    pass


def cuda_major(release):
    return int(release["cuda"].split(".")[0])


def pins_for(release):
    return list(PINS[cuda_major(release)])


def l4t_from_text(text):
    """'36.4.3' from the first line of /etc/nv_tegra_release."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        raise JetpackError(f"cannot read the L4T release from {text.strip()[:80]!r}")
    return f"{m.group(1)}.{m.group(2)}"


def release_for(l4t):
    """The table's row for an L4T release ('36.4.3', 'r36.4.0', '38.2'): the longest matching
    l4t prefix. JetpackError when the release is unknown or not supported."""
    l4t = str(l4t).lstrip("rR")
    parts = l4t.split(".")
    best = None
    for row in RELEASES:
        want = row["l4t"].split(".")
        if parts[:len(want)] == want and (best is None or len(want) > len(best["l4t"].split("."))):
            best = row
    if best is None:
        known = ", ".join(f"JetPack {r['jetpack']} (L4T {r['l4t']})" for r in RELEASES if r["supported"])
        raise JetpackError(f"L4T {l4t} is not a JetPack release this toolkit knows; supported: {known}")
    if not best["supported"]:
        raise JetpackError(f"JetPack {best['jetpack']} (L4T {l4t}) is not supported: {best['note']}")
    return best


def box_l4t(path=NV_TEGRA_RELEASE):
    try:
        with open(path) as f:
            return l4t_from_text(f.readline())
    except FileNotFoundError:
        raise JetpackError(f"{path} not found: not a Jetson (use --l4t to name a release)") from None


def _version(text):
    return tuple(int(x) for x in re.findall(r"\d+", str(text))[:2])


def check_box(release, out=print):
    """Compare what Python sees here with the table's row; returns the number of problems."""
    bad = 0

    def report(name, have, ok, want):
        nonlocal bad
        bad += not ok
        out(f"  {name:12s} {have:24s} {'ok' if ok else 'EXPECTED ' + want}")

    try:
        import tensorrt
        have = tensorrt.__version__
        report("tensorrt", have, _version(have) >= _version(release["tensorrt"]),
               release["tensorrt"] + " or newer")
    except ImportError:
        report("tensorrt", "missing", False, f"{release['tensorrt']} (apt install python3-libnvinfer)")
    try:
        from cuda import bindings
        have = getattr(bindings, "__version__", "?")
        report("cuda-python", have, _version(have)[:1] == (cuda_major(release),), pins_for(release)[0])
    except ImportError:
        report("cuda-python", "missing", False, pins_for(release)[0])
    try:
        import numpy
        report("numpy", numpy.__version__, _version(numpy.__version__)[0] < 2, "1.x (JetPack's cv2 needs it)")
    except ImportError:
        report("numpy", "missing", False, release["numpy"])
    try:
        import cv2
        gst = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
        have = f"{cv2.__version__} GStreamer {gst.group(1) if gst else '?'}"
        report("opencv", have, bool(gst and gst.group(1) == "YES"), "JetPack's cv2, built with GStreamer")
    except ImportError:
        report("opencv", "missing", False, f"{release['opencv']} (apt install libopencv-python)")
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(prog="jetpack.py", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("pins", "check", "table"))
    ap.add_argument("--l4t", help="an L4T release such as 36.4.3 or r36.4.0 (default: this box's)")
    args = ap.parse_args(argv)
    if args.command == "table":
        cols = ("jetpack", "l4t", "ubuntu", "python", "cuda", "tensorrt", "cudnn", "numpy", "opencv")
        print("  ".join(f"{c:8s}" for c in cols) + "  supported")
        for r in RELEASES:
            print("  ".join(f"{r[c]:8s}" for c in cols) + f"  {'yes' if r['supported'] else 'no'}")
        return 0
    try:
        l4t = args.l4t or box_l4t()
        release = release_for(l4t)
    except JetpackError as exc:
        print(f"jetpack.py: {exc}", file=sys.stderr)
        return 2
    if args.command == "pins":
        print(" ".join(pins_for(release)))
        return 0
    print(f"JetPack {release['jetpack']} (L4T {l4t}): CUDA {release['cuda']}, TensorRT {release['tensorrt']}, "
          f"Python {release['python']} (this Python: {sys.version.split()[0]}, {os.path.basename(sys.prefix)})")
    bad = check_box(release)
    print("jetpack check: ok" if not bad else f"jetpack check: {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
