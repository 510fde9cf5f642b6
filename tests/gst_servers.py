"""Real things for the source tests, on loopback only: an RTSP server (GStreamer's
rtsp-server in a child process, so a test can kill and restart it), Aravis's fake GigE
Vision camera, and a small video file. Each helper skips the test, with the reason, when a
binary, typelib or element it needs is missing.

Run as a program it is the RTSP server:  python tests/gst_servers.py rtsp PORT
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_CAMERA = "arv-fake-gv-camera-0.8"
GVCP_PORT = 3956


# -- what is installed -------------------------------------------------------------------
def gi_status(*namespaces):
    """(True, "") when PyGObject loads these typelibs, e.g. ("Gst", "1.0")."""
    try:
        import gi
        for ns, ver in namespaces:
            gi.require_version(ns, ver)
            __import__("gi.repository." + ns)
    except (ImportError, ValueError) as exc:
        return False, f"PyGObject / typelib missing: {exc}"
    return True, ""


def require_gst(*elements):
    ok, why = gi_status(("Gst", "1.0"), ("GstApp", "1.0"))
    if not ok:
        pytest.skip(why + " (pip PyGObject<3.50; Debian gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0)")
    from gi.repository import Gst
    Gst.init(None)
    missing = [e for e in elements if Gst.ElementFactory.find(e) is None]
    if missing:
        pytest.skip(f"GStreamer element(s) not installed: {', '.join(missing)}")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_tcp(port, proc, deadline_s=15.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _die_with_parent():
    """preexec_fn: the child is killed if the test process dies first (Linux prctl)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except Exception:
        pass


# -- RTSP server -------------------------------------------------------------------------
class RtspServer:
    """A child process serving MJPEG from videotestsrc at rtsp://127.0.0.1:PORT/test."""

    def __init__(self, port=None):
        ok, why = gi_status(("Gst", "1.0"), ("GstRtspServer", "1.0"))
        if not ok:
            pytest.skip(why + " (Debian gir1.2-gst-rtsp-server-1.0, libgstrtspserver-1.0-0)")
        require_gst("videotestsrc", "jpegenc", "rtpjpegpay", "rtspsrc", "jpegdec")
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "gst_servers.py"), "rtsp", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)
        if not _wait_tcp(self.port, self.proc):
            err = self.stop()
            raise RuntimeError(f"RTSP server did not start on 127.0.0.1:{self.port}: {err}")
        return self

    def stop(self):
        err = b""
        if self.proc is not None:
            self.proc.kill()
            try:
                _, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        return (err or b"").decode(errors="replace")[-500:]


def _serve_rtsp(port):
    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=160,height=120,"
                       "framerate=30/1 ! jpegenc quality=60 ! rtpjpegpay name=pay0 pt=26 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    if not server.attach(None):
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    GLib.MainLoop().run()


# -- Aravis fake GigE Vision camera ------------------------------------------------------
def _gvcp_port_free():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", GVCP_PORT))
            return True
        except OSError:
            return False


class FakeGigECamera:
    """arv-fake-gv-camera-0.8 on 127.0.0.1; open it as gige://127.0.0.1 (by address: opened
    by name, Aravis may pick a non-loopback interface to receive on)."""

    def __init__(self):
        if shutil.which(FAKE_CAMERA) is None:
            pytest.skip(f"{FAKE_CAMERA} not installed (Debian aravis-tools)")
        require_gst("aravissrc", "videoconvert")
        self.proc = None

    def start(self):
        if not _gvcp_port_free():
            pytest.skip(f"UDP 127.0.0.1:{GVCP_PORT} is busy (another GigE camera simulator is running)")
        self.proc = subprocess.Popen([FAKE_CAMERA, "-i", "127.0.0.1"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        end = time.monotonic() + 10
        while _gvcp_port_free():        # it has bound the control port once ours fails
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"{FAKE_CAMERA} did not start on 127.0.0.1:{GVCP_PORT}")
            time.sleep(0.05)
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


# -- a video file ------------------------------------------------------------------------
def make_video(path, frames=20, width=160, height=120, fps=10):
    """An MJPEG .avi (cv2.VideoWriter) whose frame i is a flat grey of level 10*i."""
    import cv2
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        pytest.skip("cv2.VideoWriter cannot write MJPEG .avi here")
    for i in range(frames):
        writer.write(np.full((height, width, 3), (10 * i) % 256, np.uint8))
    writer.release()
    return path


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "rtsp":
        _serve_rtsp(int(sys.argv[2]))
    else:
        sys.exit("usage: gst_servers.py rtsp PORT")
