"""GStreamer: one pipeline string per scheme, and an appsink reader through PyGObject.

The pipeline builders are plain string functions (no `gi` needed), so OpenCV's GStreamer
backend can use them too. `gi` is imported only when a pipeline is actually run.
On Jetson the NVIDIA elements are used where their factories exist: nvarguscamerasrc (CSI),
nvv4l2decoder (hardware decode), nvvidconv (colour conversion and scaling); elsewhere
decodebin / jpegdec and videoconvert / videoscale.
"""

import os
import re

import numpy as np

from ..common.errors import EdgeError
from .base import EndOfStream, Lost

SINK_NAME = "edge_sink"

# Where a missing element comes from, for the error message.
PACKAGES = {
    "nvarguscamerasrc": "NVIDIA JetPack (Jetson only)",
    "nvv4l2decoder": "NVIDIA JetPack (Jetson only)",
    "nvvidconv": "NVIDIA JetPack (Jetson only)",
    "aravissrc": "Debian libaravis-0.8-0 (the Aravis GStreamer plugin)",
    "bayer2rgb": "Debian gstreamer1.0-plugins-bad",
    "rtspsrc": "Debian gstreamer1.0-plugins-good",
    "v4l2src": "Debian gstreamer1.0-plugins-good",
    "jpegdec": "Debian gstreamer1.0-plugins-good",
    "jpegparse": "Debian gstreamer1.0-plugins-bad",
}
_RAW_FORMATS = {"RGB": 3, "BGR": 3, "RGBA": 4, "BGRA": 4, "RGBx": 4, "BGRx": 4, "GRAY8": 1}
_SINK_CAPS = "video/x-raw,format={ RGB, RGBA, RGBx, BGR, BGRA, BGRx, GRAY8 }"


# -- pipeline strings ---------------------------------------------------------------------
def _quote(value):
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _size(options):
    if options.get("width") and options.get("height"):
        return f",width={int(options['width'])},height={int(options['height'])}"
    return ""


def _rate(options):
    fps = options.get("fps")
    return f",framerate={int(round(float(fps)))}/1" if fps else ""


def sink(options, for_opencv=False):
    if for_opencv:      # OpenCV's CAP_GSTREAMER sets its own appsink up; it wants BGR
        return "appsink drop=true max-buffers=2 sync=false"
    # The appsink never drops: a frame it threw away would leave no trace. In latest mode
    # the reader keeps pulling and the source's own one-frame buffer drops (and counts) old
    # frames, whose sequence numbers then show as gaps downstream.
    sync = "true" if options.get("sync") else "false"
    return f"appsink name={SINK_NAME} max-buffers=2 drop=false sync={sync} emit-signals=false"


def convert(options, has, hw_ok=True, for_opencv=False):
    """Decoded video (system or NVMM memory) -> RGB (RGBA on Jetson; alpha is dropped on copy)."""
    size = _size(options)
    if hw_ok and has("nvvidconv"):
        if for_opencv:
            return f"nvvidconv ! video/x-raw,format=BGRx{size} ! videoconvert ! video/x-raw,format=BGR"
        return f"nvvidconv ! video/x-raw,format=RGBA{size}"
    scale = "videoscale ! " if size else ""
    fmt = "BGR" if for_opencv else "RGB"
    return f"videoconvert ! {scale}video/x-raw,format={fmt}{size}"


def _decoder(has):
    """Compressed stream -> raw video: NVIDIA's hardware decoder after parsebin where it
    exists, decodebin (software, whatever is installed) elsewhere."""
    if has("nvv4l2decoder"):
        return "parsebin ! nvv4l2decoder"
    return "decodebin"


def build(spec, options, has, for_opencv=False):
    """The pipeline for a parsed source. `has(name)` says whether an element factory exists."""
    kind, tail = spec.kind, sink(options, for_opencv)
    if kind == "file":
        body = f"filesrc location={_quote(spec.target)} ! {_decoder(has)} ! {convert(options, has, True, for_opencv)}"
    elif kind == "rtsp":
        latency = int(options.get("latency_ms", 200))
        proto = {"tcp": " protocols=tcp", "udp": " protocols=udp", None: ""}[options.get("transport")]
        body = (f"rtspsrc location={_quote(spec.target)} latency={latency}{proto} ! {_decoder(has)} ! "
                f"{convert(options, has, True, for_opencv)}")
    elif kind == "v4l2":
        src = f"v4l2src device={_quote(spec.target)}"
        if str(options.get("format", "raw")).lower() in ("mjpeg", "mjpg", "jpeg"):
            dec = "jpegparse ! nvv4l2decoder mjpeg=1" if has("nvv4l2decoder") else "jpegdec"
            body = f"{src} ! image/jpeg{_size(options)}{_rate(options)} ! {dec} ! {convert(options, has, True, for_opencv)}"
        else:
            caps = f"video/x-raw{_size(options)}{_rate(options)}"
            mid = f" ! {caps}" if caps != "video/x-raw" else ""
            body = f"{src}{mid} ! {convert(options, has, True, for_opencv)}"
    elif kind == "csi":
        caps = f"video/x-raw(memory:NVMM){_size(options)}{_rate(options)}"
        nv = convert(options, lambda name: True, True, for_opencv)     # NVMM needs nvvidconv
        body = f"nvarguscamerasrc sensor-id={int(spec.target)} ! {caps} ! {nv}"
    elif kind == "gige":
        name = f" camera-name={_quote(spec.target)}" if spec.target else ""
        feats = f" features={_quote(options['features'])}" if options.get("features") else ""
        bayer = " ! video/x-bayer ! bayer2rgb" if options.get("bayer") else ""
        body = f"aravissrc{name}{feats}{bayer} ! {convert(options, has, False, for_opencv)}"
    elif kind == "gst":
        text = spec.target.strip()
        if re.search(r"(^|!)\s*appsink\b", text):
            return text
        body = f"{text} ! {convert(options, has, False, for_opencv)}"
    else:
        raise EdgeError(f"GStreamer cannot open {kind} sources", f"source {spec.uri!r}")
    return f"{body} ! {tail}"


def elements(pipeline):
    """Element names in a pipeline string (caps filters and properties left out)."""
    names = []
    for part in re.sub(r'"(?:[^"\\]|\\.)*"', '""', pipeline).split("!"):
        words = part.split()
        if not words or "/" in words[0].split(",")[0] or words[0].startswith("("):
            continue
        word = words[0]
        if "=" not in word and "." not in word:
            names.append(word)
    return names


# -- running a pipeline through PyGObject --------------------------------------------------
_GST = None


def _gst():
    """Import and initialise GStreamer's Python bindings once; GstUnavailable if missing."""
    global _GST
    if _GST is None:
        try:
            import gi
            gi.require_version("Gst", "1.0")
            gi.require_version("GstApp", "1.0")
            from gi.repository import GLib, Gst, GstApp
        except (ImportError, ValueError) as exc:
            raise GstUnavailable(
                f"GStreamer's Python bindings are missing ({exc}); install PyGObject<3.50 "
                "(pip) and gir1.2-gstreamer-1.0, gir1.2-gst-plugins-base-1.0 (Debian)") from None
        Gst.init(None)
        _GST = (Gst, GstApp, GLib)
    return _GST


class GstUnavailable(Exception):
    pass


def available():
    """(True, "") when PyGObject and GStreamer load, else (False, why)."""
    try:
        _gst()
        return True, ""
    except GstUnavailable as exc:
        return False, str(exc)


def has_element(name):
    Gst = _gst()[0]
    return Gst.ElementFactory.find(name) is not None


def check_elements(pipeline, where, has=has_element):
    missing = [n for n in elements(pipeline) if not has(n)]
    if missing:
        hints = "; ".join(f"{n}: {PACKAGES.get(n, 'a GStreamer plugin package')}" for n in missing)
        raise EdgeError(f"GStreamer element(s) not installed: {', '.join(missing)} ({hints}); "
                        f"pipeline: {pipeline}", where)


class GstCapture:
    """A running pipeline; grab() pulls one sample from its appsink and copies it out once."""

    def __init__(self, pipeline, options, where):
        Gst, GstApp, GLib = _gst()
        self._Gst = Gst
        self.desc = pipeline
        try:
            self.pipeline = Gst.parse_launch(pipeline)
        except GLib.Error as exc:
            raise EdgeError(f"bad GStreamer pipeline ({exc.message}): {pipeline}", where) from None
        self.sink = self.pipeline.get_by_name(SINK_NAME) if hasattr(self.pipeline, "get_by_name") else None
        if self.sink is None:
            self.sink = _find_appsink(self.pipeline, GstApp)
        if self.sink is None:
            raise EdgeError(f"the pipeline has no appsink: {pipeline}", where)
        self.sink.set_property("emit-signals", False)
        self.sink.set_property("max-buffers", 2)
        self.sink.set_property("drop", False)          # see sink(): drops are counted by the source
        if self.sink.get_property("caps") is None:
            self.sink.set_property("caps", Gst.Caps.from_string(_SINK_CAPS))
        self.bus = self.pipeline.get_bus()
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            why = self._pop_error() or "the pipeline refused to start"
            self.close()
            raise Lost(why)

    def _pop_error(self):
        Gst = self._Gst
        msg = self.bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
        if msg is None:
            return None
        if msg.type == Gst.MessageType.EOS:
            return "EOS"
        err, _debug = msg.parse_error()
        return f"{msg.src.get_name()}: {err.message}"

    def grab(self, timeout):
        sample = self.sink.try_pull_sample(int(timeout * 1e9))
        if sample is None:
            why = self._pop_error()
            if why == "EOS" or (why is None and self.sink.is_eos()):
                raise EndOfStream()
            if why:
                raise Lost(why)
            return None
        return _sample_to_rgb(sample)

    def close(self):
        if self.pipeline is not None:
            self.pipeline.set_state(self._Gst.State.NULL)
            self.pipeline = None

    def describe(self):
        return self.desc


def _find_appsink(pipeline, GstApp):
    if isinstance(pipeline, GstApp.AppSink):
        return pipeline
    it = pipeline.iterate_recurse() if hasattr(pipeline, "iterate_recurse") else None
    found = []
    if it is not None:
        it.foreach(lambda el: found.append(el) if isinstance(el, GstApp.AppSink) else None)
    return found[0] if found else None


def _plane_layout(sample, buf, h, size):
    """(offset, row stride) of the image in the buffer: from the buffer's video meta where it
    carries one (hardware decoders and converters may pad rows and planes beyond what the
    caps imply), else GStreamer's default layout for the caps (rows padded to 4 bytes)."""
    try:
        import gi
        gi.require_version("GstVideo", "1.0")
        from gi.repository import GstVideo
    except (ImportError, ValueError):
        return 0, size // h
    meta = GstVideo.buffer_get_video_meta(buf)
    if meta is not None:
        return int(meta.offset[0]), int(meta.stride[0])
    info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
    if info is not None:
        return int(info.offset[0]), int(info.stride[0])
    return 0, size // h


def _sample_to_rgb(sample):
    """Copy a sample out of GStreamer memory (once) into H x W x 3 uint8 RGB."""
    st = sample.get_caps().get_structure(0)
    w, h, fmt = st.get_value("width"), st.get_value("height"), st.get_value("format")
    ch = _RAW_FORMATS.get(fmt)
    if ch is None:
        raise Lost(f"appsink delivered unsupported format {fmt!r}; end the pipeline with "
                   "videoconvert ! video/x-raw,format=RGB ! appsink")
    buf = sample.get_buffer()
    data = buf.extract_dup(0, buf.get_size())       # the one copy out of GStreamer memory
    offset, stride = _plane_layout(sample, buf, h, len(data))
    if stride < w * ch or offset + stride * (h - 1) + w * ch > len(data):
        raise Lost(f"appsink buffer of {len(data)} bytes does not hold {w}x{h} {fmt} "
                   f"(row stride {stride}, offset {offset})")
    view = np.ndarray((h, w, ch), np.uint8, data, offset, (stride, ch, 1))
    out = np.empty((h, w, 3), np.uint8)              # writable, contiguous RGB
    if ch == 1:
        out[...] = view
    elif fmt.startswith("BGR"):
        out[...] = view[..., 2::-1]
    else:
        out[...] = view[..., :3]
    return out


def opener(spec, options, where, has=None):
    has = has or has_element
    pipeline = build(spec, options, has)
    check_elements(pipeline, where, has)
    if spec.kind == "file":
        if not os.path.isfile(spec.target):
            raise EdgeError("video file not found", spec.target)
    return (lambda: GstCapture(pipeline, options, where)), pipeline
