"""Sources without a camera: URIs, options, pipeline strings per platform, folders, and
video files through OpenCV. GStreamer pipelines that really run are in test_sources_gst.py."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge.common.errors import EdgeError
from edge.sources import SourceEnded, open_source, parse
from edge.sources.backoff import Backoff
from edge.sources.gst import build, check_elements, elements
from edge.sources.uri import SourceSpec

sys.path.insert(0, os.path.dirname(__file__))
from gst_servers import make_video  # noqa: E402

JETSON = lambda name: True                               # noqa: E731  every factory exists
DESKTOP = lambda name: not name.startswith("nv")         # noqa: E731  no NVIDIA elements


def read_all(src, limit=500):
    frames = []
    with pytest.raises(SourceEnded):
        for _ in range(limit):
            f = src.read(timeout=10)
            assert f is not None, "source stalled"
            frames.append(f)
    return frames


# -- URIs --------------------------------------------------------------------------------
def test_parse_schemes(tmp_path):
    video = tmp_path / "v.avi"
    video.write_bytes(b"x")
    assert parse("csi://1").kind == "csi" and parse("csi://1").target == 1
    assert parse("v4l2:///dev/video2").target == "/dev/video2"
    assert parse("/dev/video0").kind == "v4l2"
    assert parse("rtsp://cam.local:8554/s").kind == "rtsp"
    assert parse("rtsps://cam.local/s").kind == "rtsp"
    assert parse("gige://Basler-123").target == "Basler-123"
    assert parse("aravis://127.0.0.1").kind == "gige"
    assert parse("videotestsrc ! appsink").kind == "gst"
    assert parse("gst://videotestsrc ! appsink").target == "videotestsrc ! appsink"
    assert parse(f"file://{video}").kind == "file" and parse(f"file://{video}").finite
    assert parse(str(tmp_path)).kind == "folder"
    assert parse(f"file://{tmp_path}").kind == "folder"
    assert parse("opencv://0").target == 0
    assert not parse("rtsp://h/s").finite


@pytest.mark.parametrize("uri", ["foo://bar", "", "csi://left", "/no/such/thing.mp4", "v4l2://video0"])
def test_bad_uri_names_it_and_lists_schemes(uri):
    with pytest.raises(EdgeError) as exc:
        open_source(uri)
    msg = str(exc.value)
    assert repr(uri) in msg and "rtsp://" in msg and "gige://" in msg


def test_unknown_option_is_named():
    with pytest.raises(EdgeError, match="'reconect'"):
        open_source("rtsp://127.0.0.1:9/x", {"reconect": {}})
    with pytest.raises(EdgeError, match="reconnect"):
        open_source("rtsp://127.0.0.1:9/x", {"reconnect": {"initial_s": 5, "max_s": 1}})
    with pytest.raises(EdgeError, match="width"):
        open_source("rtsp://127.0.0.1:9/x", {"width": 640})


def test_backoff_doubles_to_cap_and_resets():
    b = Backoff(0.5, 3)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next_delay() == 0.5


# -- pipeline strings: Jetson elements where they exist ----------------------------------
def test_pipelines_use_nvidia_elements_on_jetson():
    opts = {"width": 640, "height": 480, "fps": 30}
    video = SourceSpec("file", "/v.mp4", "file:///v.mp4", True)
    assert "parsebin ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=RGBA" in build(video, {}, JETSON)
    file_d = build(video, {}, DESKTOP)
    assert "decodebin ! videoconvert ! video/x-raw,format=RGB" in file_d
    assert not [e for e in elements(file_d) if e.startswith("nv")]
    csi = build(parse("csi://0"), opts, JETSON)
    assert csi.startswith("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=640,height=480,"
                          "framerate=30/1 ! nvvidconv ! video/x-raw,format=RGBA,width=640,height=480 ! appsink")
    rtsp = build(parse("rtsp://u:p@10.0.0.5/s"), {"transport": "tcp", "latency_ms": 0}, DESKTOP)
    assert rtsp.startswith('rtspsrc location="rtsp://u:p@10.0.0.5/s" latency=0 protocols=tcp ! decodebin')
    mjpeg = build(parse("v4l2:///dev/video1"), {"format": "mjpeg"}, JETSON)
    assert "image/jpeg ! jpegparse ! nvv4l2decoder mjpeg=1 ! nvvidconv" in mjpeg
    assert "jpegdec ! videoconvert" in build(parse("v4l2:///dev/video1"), {"format": "mjpeg"}, DESKTOP)
    gige = build(parse("gige://Cam-1"), {"features": "Gain=2", "drop": True}, JETSON)
    assert gige.startswith('aravissrc camera-name="Cam-1" features="Gain=2" ! videoconvert')
    assert "drop=false" in gige and "max-buffers=2" in gige     # latest mode drops in the source, counted
    assert "drop=false" in build(parse("gige://"), {}, DESKTOP)
    raw = build(parse("videotestsrc ! videoconvert ! appsink"), {}, DESKTOP)
    assert raw == "videotestsrc ! videoconvert ! appsink"
    assert build(parse("gst://videotestsrc"), {}, DESKTOP).endswith("! appsink name=edge_sink max-buffers=2 "
                                                                   "drop=false sync=false emit-signals=false")
    cv = build(parse("csi://0"), {}, JETSON, for_opencv=True)
    assert "video/x-raw,format=BGR ! appsink" in cv


def test_element_names_and_missing_element_error():
    p = 'filesrc location="a ! b.mp4" ! video/x-raw(memory:NVMM),width=2 ! nvvidconv ! appsink name=s'
    assert elements(p) == ["filesrc", "nvvidconv", "appsink"]
    with pytest.raises(EdgeError, match="nvvidconv.*JetPack"):
        check_elements(p, "source 'x'", DESKTOP)


def test_csi_without_jetson_is_a_clear_error():
    pytest.importorskip("gi")
    with pytest.raises(EdgeError, match="nvarguscamerasrc"):
        open_source("csi://0", {"backend": "gstreamer"})


def test_import_pulls_neither_gi_nor_torch():
    code = ("import sys, edge.sources; edge.sources.parse('csi://0'); "
            "print('gi' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split() == ["False", "False"], out.stderr


# -- folder ------------------------------------------------------------------------------
def test_folder_in_name_order_rgb_then_ended(tmp_path):
    for i, bgr in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((8, 10, 3), bgr, np.uint8))
    src = open_source(str(tmp_path)).start()
    frames = read_all(src)
    assert [f.seq for f in frames] == [0, 1, 2]
    assert [tuple(f.image[0, 0]) for f in frames] == [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (8, 10, 3)
    assert frames[0].t_capture <= frames[2].t_capture
    assert [e["kind"] for e in src.events()] == ["ended"]
    assert src.stats()["frames"] == 3 and src.stats()["outages"] == 0
    with pytest.raises(SourceEnded):            # and stays ended
        src.read(0.1)
    src.close()


def test_folder_loop_and_resize(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 10, 3), 50 * i, np.uint8))
    src = open_source(f"folder://{tmp_path}", {"loop": True, "width": 4, "height": 3}).start()
    frames = [src.read(10) for _ in range(5)]
    src.close()
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 50, 0, 50, 0]
    assert frames[0].image.shape == (3, 4, 3)
    assert not [e for e in src.events() if e["kind"] != "ended"]


def test_folder_bad_image_names_the_file(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    src = open_source(str(tmp_path)).start()
    assert src.read(10).seq == 0
    with pytest.raises(EdgeError, match="b.png"):
        src.read(10)
    src.close()


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(EdgeError, match="no images"):
        open_source(str(tmp_path)).start()


# -- video file through OpenCV (the portable backend) -------------------------------------
def test_video_file_through_opencv(tmp_path):
    path = make_video(str(tmp_path / "clip.avi"), frames=12)
    src = open_source(f"file://{path}", {"backend": "opencv"}).start()
    assert src.describe().startswith("opencv: cv2.VideoCapture(")
    frames = read_all(src)
    src.close()
    assert len(frames) == 12 and [f.seq for f in frames] == list(range(12))
    levels = [float(f.image.mean()) for f in frames]
    assert all(abs(lv - 10 * i) < 4 for i, lv in enumerate(levels)), levels
    assert frames[0].image.shape == (120, 160, 3)


def test_without_pygobject_files_fall_back_to_opencv(tmp_path):
    path = make_video(str(tmp_path / "clip.avi"), frames=5)
    code = ("import sys; sys.modules['gi'] = None\n"            # as if PyGObject were not installed
            "from edge.sources import open_source, SourceEnded\n"
            f"src = open_source({path!r}).start()\n"
            "n = 0\n"
            "try:\n"
            "    while src.read(10) is not None: n += 1\n"
            "except SourceEnded: pass\n"
            "print(src.describe().split(':')[0], n)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split() == ["opencv", "5"], out.stderr
    code = ("import sys; sys.modules['gi'] = None\n"
            "from edge.sources import open_source\n"
            "open_source('gige://cam', {'backend': 'gstreamer'})\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "PyGObject" in out.stderr and "gir1.2-gstreamer-1.0" in out.stderr


def test_read_after_close_ends(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    src = open_source(str(tmp_path), {"loop": True}).start()
    src.close()
    with pytest.raises(SourceEnded, match="closed"):
        src.read(0.1)
