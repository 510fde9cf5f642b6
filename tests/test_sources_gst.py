"""GStreamer sources running real pipelines on loopback: videotestsrc, a video file through
decodebin, an RTSP server that is killed and restarted, and Aravis's fake GigE camera
unplugged and plugged back. Every wait is bounded; nothing asserts on timing."""

import os
import sys
import time

import numpy as np
import pytest

from edge.sources import SourceEnded, open_source

sys.path.insert(0, os.path.dirname(__file__))
from gst_servers import FakeGigECamera, RtspServer, free_port, make_video, require_gst  # noqa: E402

FAST_RECONNECT = {"reconnect": {"initial_s": 0.2, "max_s": 1.0}, "stall_s": 2.0}


class Watch:
    """Reads a source and keeps its events, until a condition holds or a deadline passes."""

    def __init__(self, src):
        self.src, self.frames, self.events = src, [], []

    def until(self, cond, deadline_s=30.0):
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            f = self.src.read(timeout=0.2)
            if f is not None:
                self.frames.append(f)
            self.events += self.src.events()
            if cond():
                return True
        raise AssertionError(f"timed out; events: {self.events}, stats: {self.src.stats()}")

    def kinds(self):
        return [e["kind"] for e in self.events]

    def frames_after(self, n0, n):
        return lambda: len(self.frames) >= n0 + n


def test_videotestsrc_through_appsink():
    require_gst("videotestsrc", "videoconvert", "appsink")
    src = open_source("gst://videotestsrc num-buffers=40 ! video/x-raw,width=64,height=48,format=I420 "
                      "! videoconvert ! appsink sync=false").start()
    frames = []
    with pytest.raises(SourceEnded):
        for _ in range(100):
            f = src.read(timeout=10)
            assert f is not None
            frames.append(f)
    assert [f.seq for f in frames] == list(range(40))         # inspect-all: nothing dropped
    img = frames[0].image
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.flags.writeable
    # videotestsrc's first bar is white, its second yellow (R and G high, B low): RGB order
    assert img[10, 1].tolist() == [235, 235, 235] or img[10, 1].min() > 200
    assert img[10, 12][0] > 150 and img[10, 12][2] < 60
    assert all(a.t_capture <= b.t_capture for a, b in zip(frames, frames[1:]))
    assert [e["kind"] for e in src.events()] == ["ended"]
    st = src.stats()
    assert st["frames"] == 40 and st["outages"] == 0 and st["fps"] > 0
    assert src.describe().startswith("gstreamer: videotestsrc")
    src.close()


def test_latest_mode_drops_and_seq_shows_the_gap():
    require_gst("videotestsrc", "videoconvert", "appsink")
    src = open_source("gst://videotestsrc is-live=true ! video/x-raw,width=32,height=24,framerate=200/1 "
                      "! videoconvert ! appsink", {"drop": True}).start()
    first = src.read(timeout=10)
    end = time.monotonic() + 20
    while src.stats()["dropped"] == 0 and time.monotonic() < end:
        time.sleep(0.05)                                       # a slow consumer
    nxt = src.read(timeout=10)
    src.close()
    assert src.stats()["dropped"] > 0 and nxt.seq > first.seq + 1


def test_video_file_through_decodebin(tmp_path):
    require_gst("filesrc", "decodebin", "avidemux", "jpegdec", "videoconvert")
    path = make_video(str(tmp_path / "clip.avi"), frames=15)
    src = open_source(f"file://{path}", {"backend": "gstreamer"}).start()
    assert "decodebin" in src.describe() or "nvv4l2decoder" in src.describe()
    frames = []
    with pytest.raises(SourceEnded):
        for _ in range(100):
            frames.append(src.read(timeout=10))
    levels = [float(f.image.mean()) for f in frames]
    assert len(frames) == 15 and all(abs(lv - 10 * i) < 4 for i, lv in enumerate(levels)), levels
    assert [e["kind"] for e in src.events()] == ["ended"]
    src.close()

    looped = open_source(path, {"loop": True, "width": 80, "height": 60}).start()
    frames = [looped.read(timeout=10) for _ in range(35)]
    looped.close()
    assert [f.seq for f in frames] == list(range(35)) and frames[0].image.shape == (60, 80, 3)
    assert abs(float(frames[15].image.mean())) < 4            # back at the first frame
    assert "ended" not in [e["kind"] for e in looped.events()]


def test_video_file_that_is_not_a_video_names_the_file(tmp_path):
    require_gst("filesrc", "decodebin")
    bad = tmp_path / "notes.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    src = open_source(str(bad), {"backend": "gstreamer"}).start()
    with pytest.raises(Exception) as exc:
        for _ in range(50):
            src.read(timeout=10)
    src.close()
    assert "notes.mp4" in str(exc.value)


def test_rtsp_camera_late_then_lost_then_back():
    server = RtspServer(port=free_port())       # skips when GstRtspServer is missing
    src = open_source(server.url, {"transport": "tcp", "latency_ms": 0, **FAST_RECONNECT})
    src.start()                                  # the server is not up yet: no exception
    w = Watch(src)
    w.until(lambda: "lost" in w.kinds(), 10)
    assert not src.stats()["connected"]
    try:
        server.start()
        w.until(w.frames_after(0, 5))
        assert w.kinds() == ["lost", "reopened"] and src.stats()["connected"]
        server.stop()                            # the camera goes away mid-stream
        w.until(lambda: w.kinds().count("lost") == 2)
        n_before = len(w.frames)
        server.start()                           # and comes back on the same address
        w.until(lambda: w.kinds().count("reopened") == 2 and len(w.frames) >= n_before + 5)
    finally:
        src.close()
        server.stop()
    assert w.kinds() == ["lost", "reopened", "lost", "reopened"]
    reopened = [e for e in w.events if e["kind"] == "reopened"]
    assert all(e["outage_s"] > 0 for e in reopened)
    seqs = [f.seq for f in w.frames]
    assert seqs == list(range(len(seqs)))        # one count across reopens
    assert w.frames[0].image.shape == (120, 160, 3)
    st = src.stats()
    assert st["outages"] == 2 and st["frames"] >= len(seqs)


def test_gige_fake_camera_unplugged_and_back():
    camera = FakeGigECamera()                    # skips when Aravis is missing
    camera.start()
    src = open_source("gige://127.0.0.1", FAST_RECONNECT)
    w = Watch(src)
    try:
        src.start()
        w.until(w.frames_after(0, 3))
        assert "aravissrc" in src.describe()
        camera.stop()
        w.until(lambda: "lost" in w.kinds())
        n_before = len(w.frames)
        camera.start()
        w.until(lambda: "reopened" in w.kinds() and len(w.frames) >= n_before + 3, 45)
    finally:
        src.close()
        camera.stop()
    assert w.kinds() == ["lost", "reopened"]
    assert [f.seq for f in w.frames] == list(range(len(w.frames)))
    img = w.frames[-1].image
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8 and img.std() > 0


def test_rtsp_through_opencv_ffmpeg():
    server = RtspServer().start()
    src = open_source(server.url, {"backend": "opencv", **FAST_RECONNECT})
    w = Watch(src)
    try:
        src.start()
        w.until(w.frames_after(0, 3))
        assert src.describe().startswith("opencv: cv2.VideoCapture(") and "CAP_FFMPEG" in src.describe()
        server.stop()
        w.until(lambda: "lost" in w.kinds())
    finally:
        src.close()
        server.stop()
    assert w.frames[0].image.shape == (120, 160, 3)


def _sample(w, h, fmt, data, stride=None, offset=0):
    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstVideo", "1.0")
    from gi.repository import Gst, GstVideo
    Gst.init(None)
    buf = Gst.Buffer.new_wrapped(bytes(data))
    if stride is not None:
        GstVideo.buffer_add_video_meta_full(buf, GstVideo.VideoFrameFlags.NONE,
                                            getattr(GstVideo.VideoFormat, fmt), w, h, 1,
                                            [offset, 0, 0, 0], [stride, 0, 0, 0])
    caps = Gst.Caps.from_string(f"video/x-raw,format={fmt},width={w},height={h},framerate=0/1")
    return Gst.Sample.new(buf, caps, None, None)


def test_row_stride_from_the_buffers_video_meta():
    """A buffer whose rows and planes are padded beyond the caps' default layout (as NVIDIA's
    converters deliver them) is read through its video meta, not guessed from its size."""
    require_gst()
    from edge.sources.gst import _sample_to_rgb

    w, h, stride, offset = 5, 3, 32, 64
    img = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    raw = np.full(offset + stride * h + 100, 0xEE, np.uint8)          # padding everywhere
    for y in range(h):
        raw[offset + y * stride: offset + y * stride + w * 3] = img[y].reshape(-1)
    np.testing.assert_array_equal(_sample_to_rgb(_sample(w, h, "RGB", raw, stride, offset)), img)
    # BGRx without a meta: the caps' layout (4 bytes a pixel, no padding needed)
    bgrx = np.zeros((h, w, 4), np.uint8)
    bgrx[..., :3] = img[..., ::-1]
    np.testing.assert_array_equal(_sample_to_rgb(_sample(w, h, "BGRx", bgrx.reshape(-1))), img)
    # RGB without a meta: rows padded to 4 bytes by GStreamer's default (15 -> 16)
    padded = np.zeros((h, 16), np.uint8)
    padded[:, :15] = img.reshape(h, 15)
    np.testing.assert_array_equal(_sample_to_rgb(_sample(w, h, "RGB", padded.reshape(-1))), img)
    # a buffer too small for what it claims is refused with the numbers
    from edge.sources.base import Lost
    with pytest.raises(Lost, match="does not hold 5x3 RGB"):
        _sample_to_rgb(_sample(w, h, "RGB", raw[:100], stride, offset))
