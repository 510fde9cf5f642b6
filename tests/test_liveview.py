"""The live view: real HTTP requests on loopback, and a real headless Chromium reading the page
after its polling script ran (skipped where Debian's chromium is not installed)."""

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from edge.common.errors import EdgeError
from edge.view.server import BOUNDARY, LiveView
from edge.common.status import STATUS_VERSION, Part, Percentiles, RunStatus
from edge.runtime.types import Decision

STATUS = RunStatus(fps=12.5, latency_ms=Percentiles(31.2, 48.9, 60.0), frames=1234, rejects=7, drops=3, late=2,
                   reject_rate=7 / 1234, source=Part(True, "streaming"), engine=Part(True, "onnxruntime", "fp32"),
                   threshold=0.5)


def frame(seq, reject=True):
    img = np.random.default_rng(seq).integers(60, 200, (240, 320, 3), dtype=np.uint8)
    amap = np.zeros((64, 64), np.float32)
    amap[20:30, 30:40] = 1.0
    dec = Decision(seq=seq, t_capture=0.0, wall=time.time(), score=0.93 if reject else 0.1, reject=reject,
                   reason="score" if reject else "ok", latency_s=0.031)
    return img, amap, dec, 0.5


def get(view, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{view.port}{path}", timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), exc.read()


def decode(jpeg):
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


@pytest.fixture
def view():
    v = LiveView(host="127.0.0.1", port=0).start()
    yield v
    v.close()


def test_http_endpoints(view):
    assert view.port > 0
    code, _, body = get(view, "/healthz")
    assert (code, body) == (503, b"no status yet\n")
    code, ctype, body = get(view, "/snapshot.jpg")
    assert code == 200 and ctype == "image/jpeg" and decode(body).shape == (240, 320, 3)   # the placeholder

    for seq in range(100):                       # update() only keeps references: no client, no encoding
        view.update(*frame(seq, reject=seq % 2 == 0))
    assert view.encodes == 0
    view.set_status(STATUS)
    code, _, body = get(view, "/healthz")
    assert (code, body) == (200, b"ok\n")
    code, ctype, body = get(view, "/status.json")
    s = json.loads(body)
    assert code == 200 and ctype == "application/json"
    st = RunStatus.from_dict(s["status"])
    assert st == STATUS and s["status"]["version"] == 1
    assert (st.fps, st.latency_ms.p95, st.rejects, st.drops, st.late) == (12.5, 48.9, 7, 3, 2)
    assert len(s["trend"]) == 100 and s["trend"][-1][1:] == [0.1, False] and s["trend"][-2][1:] == [0.93, True]
    assert s["health"] == {"ok": True, "reason": "ok"} and s["frame"]["seq"] == 99
    assert [v["seq"] for v in s["verdicts"]][:3] == [99, 98, 97] and len(s["verdicts"]) == 20
    assert s["verdicts"][1]["reject"] is True and s["verdicts"][1]["latency_ms"] == 31.0

    code, ctype, body = get(view, "/snapshot.jpg")
    img = decode(body)
    assert code == 200 and img.shape == (240 + 18, 320, 3)          # camera size plus the caption bar
    assert img[5, 5, 1] > 100 and img[5, 5, 2] < 100               # green caption (BGR): seq 99 passed
    assert view.encodes == 1
    get(view, "/snapshot.jpg")
    assert view.encodes == 1                                        # same frame: encoded once

    view.set_status(dataclasses.replace(STATUS, fault=["engine: CUDA error 700"]))
    code, _, body = get(view, "/healthz")
    assert (code, body) == (503, b"engine: CUDA error 700\n")
    assert json.loads(get(view, "/status.json")[2])["health"]["ok"] is False
    view.set_status(dataclasses.replace(STATUS, source=Part(False, "camera lost")))
    assert get(view, "/healthz")[:3:2] == (503, b"source: camera lost\n")
    with pytest.raises(EdgeError, match=f"version {STATUS_VERSION + 1} not understood"):   # newer than this code
        view.set_status(dict(STATUS.to_dict(), version=STATUS_VERSION + 1))
    with pytest.raises(EdgeError, match="unknown keys cameras"):       # version 1 has no cameras
        view.set_status(dict(STATUS.to_dict(), cameras=[]))
    assert get(view, "/nothing")[0] == 404
    code, ctype, page = get(view, "/")
    assert code == 200 and ctype.startswith("text/html") and b"/status.json" in page
    assert b"http://" not in page and b"https://" not in page     # nothing from outside the box


def test_stale_status_is_unhealthy():
    with LiveView(port=0, stale_s=1e-9) as v:
        v.set_status(STATUS)
        code, _, body = get(v, "/healthz")
        assert code == 503 and body.startswith(b"status not updated")


def test_mjpeg_stream(view):
    view.update(*frame(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{view.port}/stream.mjpg", timeout=10) as r:
        assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        head = b""
        while b"\r\n\r\n" not in head:
            head += r.read(1)
        assert head.startswith(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n".encode())
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        first = r.read(length)
        assert decode(first).shape == (258, 320, 3)
        view.update(*frame(2, reject=False))                         # a new frame reaches the open stream
        assert r.read(2) == b"\r\n"
        head = b""
        while b"\r\n\r\n" not in head:
            head += r.read(1)
        second = r.read(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
        assert decode(second)[5, 5, 1] > 100                         # green caption: not the reject
    assert view.encodes == 2


def test_stream_slots_are_limited_and_given_back():
    """Beyond max_streams a viewer gets 503; a viewer that leaves frees its slot."""
    with LiveView(port=0, max_streams=1, max_fps=50) as v:
        v.update(*frame(1))
        url = f"http://127.0.0.1:{v.port}/stream.mjpg"
        first = urllib.request.urlopen(url, timeout=10)
        assert first.read(2) == b"--"                                 # its slot is taken
        code, _, body = get(v, "/stream.mjpg")
        assert (code, body) == (503, b"too many live streams\n")
        first.close()
        deadline, seq = time.monotonic() + 20, 2
        while True:                     # the server learns of the closed socket at its next write
            v.update(*frame(seq))
            seq += 1
            try:
                with urllib.request.urlopen(url, timeout=10) as again:
                    assert again.status == 200
                    break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and time.monotonic() < deadline
                time.sleep(0.05)


def test_port_in_use(view):
    with pytest.raises(EdgeError, match=f"127.0.0.1:{view.port}: cannot serve the live view"):
        LiveView(port=view.port).start()


CHROMIUM = shutil.which("chromium")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--virtual-time-budget=3000", "--window-size=1200,800"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_in_headless_chromium(view, tmp_path):
    for seq in range(5):
        view.update(*frame(seq, reject=seq % 2 == 0))
    view.set_status(STATUS)
    # ?mode=snapshot: a still a second instead of the endless MJPEG, which would keep a headless
    # browser's virtual time from advancing (the stream itself is tested above over HTTP)
    url = f"http://127.0.0.1:{view.port}/?mode=snapshot"

    def chromium(*args):
        with tempfile.TemporaryDirectory() as profile:
            return subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *args, url],
                                  capture_output=True, timeout=90)

    dom = chromium("--dump-dom").stdout.decode()
    assert 'id="fps">12.5 /s</td>' in dom                       # written by the polling script
    assert 'id="lat_p50">31.2</td><td class="n" id="lat_p95">48.9</td><td class="n" id="lat_p99">60.0</td>' in dom
    for key, value in (("rejects", "7"), ("drops", "3"), ("late", "2"), ("frames", "1,234"),
                       ("reject_rate", "0.57 %"), ("threshold", "0.500")):
        assert f'id="{key}">{value}</' in dom
    assert '<span id="source">streaming</span>' in dom and 'id="health" class="ok">healthy<' in dom
    assert 'class="dot ok" id="source_dot"' in dom and 'class="dot" id="line_dot"' in dom
    assert '<td class="rej">REJECT</td>' in dom

    shot = tmp_path / "liveview.png"
    chromium(f"--screenshot={shot}")
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (800, 1200)
    keep = os.environ.get("LIVEVIEW_SCREENSHOT")           # to look at it: LIVEVIEW_SCREENSHOT=/tmp/x.png
    if keep:
        shutil.copy(shot, keep)
