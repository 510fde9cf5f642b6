"""Capture sources named by URI.

    src = open_source("rtsp://10.0.0.5/stream", {"reconnect": {"initial_s": 0.5, "max_s": 10}})
    src.start()
    frame = src.read(timeout=1.0)     # edge.runtime.types.Frame (RGB uint8), None on timeout,
                                      # SourceEnded at the end of a file or folder
    src.events(); src.stats(); src.describe(); src.close()

Backends: GStreamer through PyGObject's appsink (the main path, hardware elements on
Jetson), OpenCV's VideoCapture (portable; the fallback for file, v4l2 and rtsp sources when
PyGObject is missing), and a folder reader. See docs/sources.md.
"""

import shutil
import subprocess

from ..common.errors import EdgeError
from .base import Source, SourceEnded
from .uri import SCHEMES, mask_credentials, parse

__all__ = ["open_source", "SourceEnded", "Source", "SCHEMES", "parse"]

OPTIONS = {
    "width": "output width in pixels (with height)",
    "height": "output height in pixels (with width)",
    "fps": "frame rate asked of a camera; pace for a folder",
    "loop": "file/folder: start again at the end instead of ending",
    "drop": "keep only the newest frame (latest mode) instead of back-pressure",
    "reconnect": "{initial_s, max_s}: back-off between reopen attempts",
    "stall_s": "seconds without a frame that count as a lost camera (0: never)",
    "backend": "auto | gstreamer | opencv",
    "latency_ms": "rtsp: jitter buffer (default 200)",
    "transport": "rtsp: tcp | udp (default: udp, then tcp)",
    "format": "v4l2: raw | mjpeg",
    "features": "gige: GenICam feature assignments, e.g. 'ExposureTime=2000 Gain=3'",
    "bayer": "gige: the camera sends Bayer; demosaic with bayer2rgb",
    "sync": "GStreamer: pace a file at its frame rate (appsink sync)",
}
_BACKENDS = ("auto", "gstreamer", "opencv")


def _check_options(options, uri):
    for key in options:
        if key not in OPTIONS:
            raise EdgeError(f"unknown source option {key!r}; known: {', '.join(OPTIONS)}",
                            f"source {mask_credentials(uri)!r}")
    if options.get("backend", "auto") not in _BACKENDS:
        raise EdgeError(f"must be one of {', '.join(_BACKENDS)}, got {options['backend']!r}", "backend")
    if options.get("transport") not in (None, "tcp", "udp"):
        raise EdgeError(f"must be tcp or udp, got {options['transport']!r}", "transport")


def _gst_inspect_has(name):
    """Without PyGObject: ask gst-inspect-1.0 whether an element exists (for OpenCV+GStreamer)."""
    exe = shutil.which("gst-inspect-1.0")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "--exists", name], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def open_source(uri, options=None):
    """A Source for a URI (see SCHEMES); EdgeError naming the URI when it cannot be one."""
    options = dict(options or {})
    _check_options(options, uri)
    spec = parse(uri)
    where = f"source {mask_credentials(spec.uri)!r}"
    backend = options.get("backend", "auto")

    if spec.kind == "folder":
        from . import folder
        return _make(spec, options, "folder", folder.opener(spec, options))
    if spec.kind == "opencv" or backend == "opencv":
        return _opencv_source(spec, options)

    from . import gst
    ok, why = gst.available()
    if ok:
        return _make(spec, options, "gstreamer", gst.opener(spec, options, where))
    if backend == "gstreamer":
        raise EdgeError(why, where)
    return _opencv_source(spec, options)


def _make(spec, options, backend, opener_and_plan):
    opener, plan = opener_and_plan
    return Source(spec, opener, options, backend, plan)


def _opencv_source(spec, options):
    from . import opencv
    pipeline = None
    if spec.kind in ("csi", "gige", "gst"):     # only a GStreamer pipeline can open these
        from .gst import build
        pipeline = build(spec, options, _gst_inspect_has, for_opencv=True)
    return _make(spec, options, "opencv", opencv.opener(spec, options, pipeline))
