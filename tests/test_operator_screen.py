"""The operator's screen during a real `edge run`: a GStreamer videotestsrc camera (over RTSP),
the live view on, and headless Chromium reading the page. Every figure is filled from the run's
status contract, the dots show the real state, counters grow, and a camera stopped mid-run
turns the camera dot red and /healthz to 503. Screenshots (1366x768 and a phone) are kept
in the test's tmp folder; the path is printed (pytest -s) and LIVEVIEW_SHOTS=DIR copies them."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import cv2
import pytest

from edge.common.status import RunStatus
from tests.helpers import PIPED, ROOT, edge

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=4000"]
FIGURES = ("frames", "rejects", "reject_rate", "drops", "late", "faults", "outages", "fps", "lat_p50", "lat_p95",
           "lat_p99", "engine_ms", "threshold", "score", "source", "engine", "line")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("screen") / "bundle"
    res = edge("train", "--method", "padim", "--data", os.path.join(PIPED, "PA_BDP01_TL"), "--out", out,
               "--size", "96", "--no-eval")
    assert res.returncode == 0, res.stderr
    return str(out)


def get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def wait(cond, timeout=60, what="condition", proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"edge run ended ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def chromium(url, *args, size=(1366, 768)):
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run([CHROMIUM, *FLAGS, f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}",
                              *args, url], capture_output=True, timeout=120)
    return res.stdout.decode()


def figure(dom, key):
    m = re.search(rf'id="{key}"[^>]*>([^<]*)<', dom)
    assert m, f"no element {key} on the page"
    return m.group(1)


def dot(dom, key):
    m = re.search(rf'class="([^"]*)" id="{key}_dot"', dom)
    return m.group(1)


def test_live_page_during_a_real_run(bundle, tmp_path):
    from tests.gst_servers import RtspServer, free_port
    camera = RtspServer(port=free_port()).start()            # skips when GstRtspServer is missing
    port = free_port()
    cfg = {"bundle": bundle, "mode": "latest", "status_every_s": 0.5,
           "source": {"uri": camera.url, "options": {"transport": "tcp", "latency_ms": 50, "stall_s": 2,
                                                     "reconnect": {"initial_s": 0.5, "max_s": 1}}},
           "decision": {"threshold": 0.0},                     # every frame flagged: the gallery fills
           "records": {"db": str(tmp_path / "r.db"), "save": "flagged"},
           "view": {"host": "127.0.0.1", "port": port, "gallery": 6}}
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", str(tmp_path / "run.yaml")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        wait(lambda: get(base + "/healthz")[0] == 200, what="/healthz 200", proc=proc)
        wait(lambda: json.loads(get(base + "/gallery.json")[1])["items"], what="flagged frames in the gallery")
        dom = chromium(base + "/?mode=snapshot", "--dump-dom")
        for key in FIGURES:
            assert figure(dom, key) not in ("", "-"), f"{key} is empty on the page"
        assert dot(dom, "source") == "dot ok" and dot(dom, "engine") == "dot ok"
        assert dot(dom, "line") == "dot" and figure(dom, "line") == "none"     # no line outputs configured
        assert 'id="health" class="ok">healthy<' in dom and figure(dom, "fault") == "none"
        assert figure(dom, "verdict_text") == "REJECT" and "/record/" in dom
        first = int(figure(dom, "frames").replace(",", ""))
        chromium(base + "/?mode=snapshot", f"--screenshot={shots / 'running-1366x768.png'}")
        chromium(base + "/?mode=snapshot", f"--screenshot={shots / 'running-phone.png'}", size=(390, 844))

        dom = chromium(base + "/?mode=snapshot", "--dump-dom")
        assert int(figure(dom, "frames").replace(",", "")) > first                    # counters grow

        st = RunStatus.from_dict(json.loads(get(base + "/status.json")[1])["status"])
        assert st.identity["engine"] == "onnxruntime" and st.identity["method"] == "padim"
        item = json.loads(get(base + "/gallery.json")[1])["items"][0]
        code, img = get(base + item["url"])
        assert code == 200 and cv2.imdecode(__import__("numpy").frombuffer(img, "uint8"), 1) is not None

        camera.stop()                                          # the camera goes away mid-run
        wait(lambda: get(base + "/healthz")[0] == 503, what="/healthz 503 after the camera stopped")
        code, body = get(base + "/healthz")
        assert b"camera lost" in body
        dom = chromium(base + "/?mode=snapshot", "--dump-dom")
        assert dot(dom, "source") == "dot bad" and figure(dom, "source") == "camera lost"
        assert 'id="health" class="bad"' in dom and int(figure(dom, "outages")) >= 1
        chromium(base + "/?mode=snapshot", f"--screenshot={shots / 'camera-lost-1366x768.png'}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            camera.stop()
    print(f"\nscreenshots: {shots}")
    keep = os.environ.get("LIVEVIEW_SHOTS")
    if keep:
        shutil.copytree(shots, keep, dirs_exist_ok=True)
    for name in ("running-1366x768.png", "running-phone.png", "camera-lost-1366x768.png"):
        assert cv2.imread(str(shots / name)) is not None, name
    assert proc.returncode == 0, err
    assert "live view on http://127.0.0.1" in err and "no token (loopback only)" in err
    import sqlite3
    con = sqlite3.connect(tmp_path / "r.db")
    summary = json.loads(con.execute("SELECT summary FROM runs").fetchone()[0])
    con.close()
    summary.pop("error")
    final = RunStatus.from_dict(summary)                      # the records keep the same contract
    assert final.frames > first and final.outages >= 1
