"""cv2.VideoCapture: the portable backend (cameras, files, RTSP through FFmpeg, and
GStreamer pipelines where OpenCV was built with GStreamer, as on Jetson)."""

import os

import cv2

from ..common.errors import EdgeError
from .base import EndOfStream, Lost, to_rgb

_API_NAMES = {cv2.CAP_ANY: "CAP_ANY", cv2.CAP_V4L2: "CAP_V4L2", cv2.CAP_FFMPEG: "CAP_FFMPEG",
              cv2.CAP_GSTREAMER: "CAP_GSTREAMER"}


def has_gstreamer():
    """True where this OpenCV was built with GStreamer (Jetson's is; PyPI wheels are not)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


class OpenCvCapture:
    def __init__(self, target, api, finite, options):
        self.target, self.api, self.finite = target, api, finite
        params = []
        if api == cv2.CAP_FFMPEG and hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
            # a stream that stops must not block read() for FFmpeg's default 30 s
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
        self.cap = cv2.VideoCapture(target, api, params)
        if not self.cap.isOpened():
            self.cap.release()
            raise Lost(f"cv2.VideoCapture could not open {target!r} ({_API_NAMES.get(api, api)})")
        if not finite:
            for prop, key in ((cv2.CAP_PROP_FRAME_WIDTH, "width"), (cv2.CAP_PROP_FRAME_HEIGHT, "height"),
                              (cv2.CAP_PROP_FPS, "fps")):
                if options.get(key):
                    self.cap.set(prop, float(options[key]))
            if options.get("drop"):
                self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    def grab(self, timeout):
        ok, img = self.cap.read()   # blocks; OpenCV has no per-read timeout for most backends
        if not ok or img is None:
            if self.finite:
                raise EndOfStream()
            raise Lost("cv2.VideoCapture.read() returned no frame")
        return to_rgb(img, "BGR")

    def close(self):
        self.cap.release()

    def describe(self):
        return f"cv2.VideoCapture({self.target!r}, {_API_NAMES.get(self.api, self.api)})"


def opener(spec, options, pipeline=None):
    """pipeline: a GStreamer pipeline ending in `appsink` (BGR) for OpenCV's GStreamer API."""
    if pipeline is not None:
        if not has_gstreamer():
            raise EdgeError("needs GStreamer, but neither PyGObject (gi) nor an OpenCV built with "
                            "GStreamer is available; install PyGObject and gir1.2-gstreamer-1.0",
                            f"source {spec.uri!r}")
        target, api = pipeline, cv2.CAP_GSTREAMER
    elif spec.kind == "v4l2":
        target, api = spec.target, cv2.CAP_V4L2
    elif spec.kind == "file":
        if not os.path.isfile(spec.target):
            raise EdgeError("video file not found", spec.target)
        target, api = spec.target, cv2.CAP_ANY
    elif spec.kind == "rtsp":
        target, api = spec.target, cv2.CAP_FFMPEG
    elif spec.kind == "opencv":
        target, api = spec.target, cv2.CAP_ANY
    else:
        raise EdgeError(f"OpenCV cannot open {spec.kind} sources", f"source {spec.uri!r}")
    plan = f"cv2.VideoCapture({target!r}, {_API_NAMES.get(api, api)})"
    return (lambda: OpenCvCapture(target, api, spec.finite, options)), plan
