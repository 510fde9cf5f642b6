"""The live view: a small web page for the line engineer, served from the line-side box.

    view = LiveView(host="127.0.0.1", port=8080).start()
    view.update(image_rgb, amap, decision, threshold)   # per frame: stores references only
    view.set_status({...})                               # e.g. every status period
    view.close()

URLs (no external JS or CSS: plants are offline):
  /             one HTML page: the latest frame with its heat-map overlay (MJPEG) and a status
                panel that polls /status.json every second
  /?mode=snapshot  the same page with a still a second (/snapshot.jpg) instead of the stream:
                for slow links, and for headless browsers (an endless stream keeps their
                virtual time from advancing)
  /stream.mjpg  multipart/x-mixed-replace JPEG stream, at most `max_fps` frames a second
  /snapshot.jpg the latest frame with its overlay (a grey "waiting" image before the first)
  /status.json  the last set_status() dict, plus `verdicts` (the last ones), `frame` (seq, age)
                and `health` ({ok, reason})
  /healthz      200 "ok" when healthy; 503 with the reason when a fault is active, when no
                status was set yet, or when the status is older than `stale_s` (the pipeline
                stopped reporting). The deploy health check uses it.

Status keys the page knows (others are listed as they come): fps, latency_ms {p50, p95},
frames, rejects, drops, late, source {ok, state}, engine {ok, name}, fault (a string, or a list
of strings, empty or None when none is active).

Cost on the frame path: update() keeps references under a lock and appends a small dict to a
ring of recent verdicts. JPEG encoding (overlay, caption, resize to `max_width`, encode) runs
in a server thread, only while a client asks for a frame, at most `max_fps` times a second,
and only for a frame not encoded yet. The caller must not modify the arrays it passed (the
pipeline hands over each frame's own arrays, so this holds).
"""

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from ..common.errors import EdgeError
from ..common.fsutil import json_default

BOUNDARY = "edgeframe"


class LiveView:
    def __init__(self, host="127.0.0.1", port=8080, max_fps=10.0, max_width=960, jpeg_quality=80,
                 verdicts=20, stale_s=10.0, max_streams=4):
        self.host = host
        self.port = int(port)
        self.max_fps = float(max_fps)
        self.max_width = int(max_width)
        self.jpeg_quality = int(jpeg_quality)
        self.stale_s = stale_s
        self.max_streams = int(max_streams)
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._frame = None              # (image_rgb, amap, decision, threshold)
        self._version = 0
        self._jpeg = None               # (version, bytes)
        self._last_encode = 0.0
        self._encode_lock = threading.Lock()
        self._status = None
        self._status_t = None
        self._verdicts = collections.deque(maxlen=int(verdicts))
        self._streams = 0
        self._closing = threading.Event()
        self._server = None
        self._thread = None
        self.encodes = 0                # JPEG encodings done (for tests and the bench)

    # ---------------------------------------------------------------- the pipeline's side

    def start(self):
        try:
            server = ThreadingHTTPServer((self.host, self.port), _Handler)
        except OSError as exc:
            raise EdgeError(f"cannot serve the live view: {exc.strerror}", f"{self.host}:{self.port}") from None
        server.daemon_threads = True
        server.view = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="liveview", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self):
        return f"http://{self.host}:{self.port}/"

    def update(self, image_rgb, amap, decision, threshold):
        """Keep the latest frame (references only) and its verdict."""
        v = {"seq": decision.seq, "wall": decision.wall, "score": round(float(decision.score), 6),
             "reject": bool(decision.reject), "reason": decision.reason,
             "latency_ms": round(float(decision.latency_s) * 1000, 2), "part_id": decision.part_id}
        with self._lock:
            self._frame = (image_rgb, amap, decision, threshold)
            self._version += 1
            self._verdicts.append(v)
            self._new_frame.notify_all()

    def set_status(self, status):
        with self._lock:
            self._status = dict(status)
            self._status_t = time.monotonic()

    def close(self):
        if self._server is None:
            return
        self._closing.set()
        with self._lock:
            self._new_frame.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self):
        return self.start() if self._server is None else self

    def __exit__(self, *exc):
        self.close()
        return False

    # ---------------------------------------------------------------- the server's side

    def health(self):
        with self._lock:
            status, t = self._status, self._status_t
        if status is None:
            return False, "no status yet"
        fault = status.get("fault") or status.get("faults")
        if fault:
            return False, "; ".join(map(str, fault)) if isinstance(fault, (list, tuple)) else str(fault)
        if self.stale_s and time.monotonic() - t > self.stale_s:
            return False, f"status not updated for {time.monotonic() - t:.0f} s"
        return True, "ok"

    def status_json(self):
        ok, reason = self.health()
        with self._lock:
            out = dict(self._status or {})
            out["verdicts"] = list(reversed(self._verdicts))
            frame = self._frame
            status_age = None if self._status_t is None else time.monotonic() - self._status_t
        out["health"] = {"ok": ok, "reason": reason}
        out["status_age_s"] = None if status_age is None else round(status_age, 2)
        if frame is not None:
            out["frame"] = {"seq": frame[2].seq, "age_s": round(time.time() - frame[2].wall, 2)}
        return json.dumps(out, default=json_default).encode("utf-8")

    def wait_frame(self, newer_than, timeout):
        """Wait (up to timeout) for a frame newer than version `newer_than`; the latest version."""
        with self._lock:
            end = time.monotonic() + timeout
            while self._version <= newer_than and not self._closing.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._new_frame.wait(left)
            return self._version

    def jpeg(self):
        """The latest frame as (JPEG bytes, version). A frame is encoded once, and encodings
        are at least 1/max_fps apart: within that gap the last encoding is returned."""
        with self._encode_lock:
            with self._lock:
                frame, version = self._frame, self._version
                cached = self._jpeg
            if frame is None:
                if cached is None:
                    cached = self._jpeg = (0, _placeholder(self.jpeg_quality))
                return cached
            if cached is not None and cached[0] == version:
                return cached
            since = time.monotonic() - self._last_encode
            if cached is not None and cached[0] > 0 and self.max_fps > 0 and since < 1.0 / self.max_fps:
                return cached
            data = self._encode(*frame)
            self._last_encode = time.monotonic()
            self.encodes += 1
            self._jpeg = (version, data)
            return self._jpeg

    def _encode(self, image_rgb, amap, decision, threshold):
        from .overlay import encode_verdict

        text = f"#{decision.seq} {'REJECT' if decision.reject else 'OK'} ({decision.reason}) score {decision.score:.4g}"
        return encode_verdict(image_rgb, amap, threshold, text, decision.reject, ".jpg", self.jpeg_quality,
                              max_width=self.max_width)


def _placeholder(quality):
    import cv2

    from .overlay import encode

    img = np.full((240, 320, 3), 60, np.uint8)
    cv2.putText(img, "waiting for frames", (50, 125), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (220, 220, 220), 1, cv2.LINE_AA)
    return encode(img, ".jpg", quality)




class _Handler(BaseHTTPRequestHandler):
    server_version = "edge-liveview"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the line box logs elsewhere
        pass

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        view = self.server.view
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8")
            elif path == "/status.json":
                self._send(200, view.status_json(), "application/json")
            elif path == "/healthz":
                ok, reason = view.health()
                self._send(200 if ok else 503, (reason + "\n").encode("utf-8"), "text/plain; charset=utf-8")
            elif path == "/snapshot.jpg":
                version, data = view.jpeg()
                self._send(200, data, "image/jpeg")
            elif path == "/stream.mjpg":
                self._stream(view)
            else:
                self._send(404, b"not found\n", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream(self, view):
        with view._lock:
            if view._streams >= view.max_streams:
                busy = True
            else:
                busy = False
                view._streams += 1
        if busy:
            self._send(503, b"too many live streams\n", "text/plain")
            return
        try:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            sent, last_t = -1, 0.0
            period = 1.0 / view.max_fps if view.max_fps > 0 else 0.0
            while not view._closing.is_set():
                if view.wait_frame(sent if sent > 0 else 0, 1.0) <= sent:
                    continue                                  # nothing new yet
                gap = period - (time.monotonic() - last_t)
                if gap > 0 and view._closing.wait(gap):       # the rate cap
                    break
                version, data = view.jpeg()
                if version == sent:   # within another viewer's cap: wait for the next encoding slot
                    if view._closing.wait(max(0.005, period - (time.monotonic() - view._last_encode))):
                        break
                    continue
                sent, last_t = version, time.monotonic()
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                                 .encode("ascii") + data + b"\r\n")
                self.wfile.flush()
        finally:
            with view._lock:
                view._streams -= 1


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Line inspection - live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #1d1f21; color: #e8e8e8; }
 header { padding: 8px 14px; background: #2b2e31; display: flex; align-items: center; gap: 14px; }
 header h1 { font-size: 16px; margin: 0; font-weight: 600; }
 #health { padding: 2px 10px; border-radius: 10px; font-weight: 600; background: #666; }
 #health.ok { background: #1f7a35; } #health.bad { background: #b3261e; }
 main { display: flex; flex-wrap: wrap; gap: 14px; padding: 14px; }
 #frame { flex: 1 1 560px; min-width: 320px; }
 #frame img { width: 100%; image-rendering: pixelated; background: #000; border-radius: 4px; }
 #panel { flex: 0 1 380px; }
 table { border-collapse: collapse; width: 100%; margin-bottom: 12px; }
 td, th { padding: 3px 6px; border-bottom: 1px solid #3a3d40; text-align: left; }
 td.n { text-align: right; font-variant-numeric: tabular-nums; }
 .big { font-size: 22px; font-weight: 600; }
 .rej { color: #ff6b5e; font-weight: 600; } .ok { color: #7bd88f; }
 .dot { display: inline-block; width: 10px; height: 10px; border-radius: 5px; background: #888; margin-right: 6px; }
 .dot.ok { background: #3ecf5c; } .dot.bad { background: #ff4d40; }
 #err { color: #ffb74d; min-height: 1.4em; }
</style></head>
<body>
<header><h1>Line inspection</h1><span id="health">...</span><span id="err"></span></header>
<main>
 <section id="frame"><img id="live" alt="latest frame with heat-map overlay"></section>
 <section id="panel">
  <table id="figures">
   <tr><th>fps</th><td class="n big" id="fps">-</td></tr>
   <tr><th>latency p50 / p95 (ms)</th><td class="n"><span id="lat_p50">-</span> / <span id="lat_p95">-</span></td></tr>
   <tr><th>frames</th><td class="n" id="frames">-</td></tr>
   <tr><th>rejects</th><td class="n" id="rejects">-</td></tr>
   <tr><th>drops</th><td class="n" id="drops">-</td></tr>
   <tr><th>late parts</th><td class="n" id="late">-</td></tr>
   <tr><th>source</th><td><span class="dot" id="source_dot"></span><span id="source">-</span></td></tr>
   <tr><th>engine</th><td><span class="dot" id="engine_dot"></span><span id="engine">-</span></td></tr>
   <tr><th>fault</th><td id="fault">none</td></tr>
  </table>
  <table id="other"></table>
  <table id="verdicts"><thead><tr><th>seq</th><th>verdict</th><th>reason</th><th class="n">score</th><th class="n">ms</th></tr></thead><tbody></tbody></table>
 </section>
</main>
<script>
"use strict";
var KNOWN = ["fps", "latency_ms", "frames", "rejects", "drops", "late", "source", "engine", "fault", "faults",
             "verdicts", "health", "frame", "status_age_s"];
function $(id) { return document.getElementById(id); }
function num(v, digits) {
  if (v === null || v === undefined || v === "") return "-";
  if (typeof v === "number") return digits === undefined ? String(v) : v.toFixed(digits);
  return String(v);
}
function part(id, v) {
  var ok = null, text = "-";
  if (v !== null && typeof v === "object") { ok = v.ok; text = v.state || v.name || v.detail || (v.ok ? "ok" : "fault"); }
  else if (v !== undefined && v !== null) { text = String(v); }
  $(id).textContent = text;
  $(id + "_dot").className = "dot" + (ok === true ? " ok" : ok === false ? " bad" : "");
}
function render(s) {
  $("fps").textContent = num(s.fps, 1);
  var lat = s.latency_ms || {};
  $("lat_p50").textContent = num(lat.p50, 1);
  $("lat_p95").textContent = num(lat.p95, 1);
  ["frames", "rejects", "drops", "late"].forEach(function (k) { $(k).textContent = num(s[k]); });
  part("source", s.source); part("engine", s.engine);
  var f = s.fault || s.faults;
  $("fault").textContent = f && f.length !== 0 ? (Array.isArray(f) ? f.join("; ") : String(f)) : "none";
  $("fault").className = f && f.length !== 0 ? "rej" : "";
  var h = s.health || {};
  $("health").textContent = h.ok ? "healthy" : ("not healthy: " + (h.reason || "?"));
  $("health").className = h.ok ? "ok" : "bad";
  var other = $("other"); other.textContent = "";
  Object.keys(s).forEach(function (k) {
    if (KNOWN.indexOf(k) >= 0) return;
    var tr = other.insertRow(), v = s[k];
    tr.insertCell().textContent = k;
    var td = tr.insertCell(); td.className = "n";
    td.textContent = (v !== null && typeof v === "object") ? JSON.stringify(v) : num(v);
  });
  var body = $("verdicts").tBodies[0]; body.textContent = "";
  (s.verdicts || []).slice(0, 12).forEach(function (v) {
    var tr = body.insertRow();
    tr.insertCell().textContent = v.seq;
    var c = tr.insertCell(); c.textContent = v.reject ? "REJECT" : "ok"; c.className = v.reject ? "rej" : "ok";
    tr.insertCell().textContent = v.reason;
    c = tr.insertCell(); c.className = "n"; c.textContent = num(v.score, 3);
    c = tr.insertCell(); c.className = "n"; c.textContent = num(v.latency_ms, 1);
  });
}
function poll() {
  var req = new XMLHttpRequest();
  req.open("GET", "/status.json", true);
  req.timeout = 2000;
  req.onload = function () {
    try { render(JSON.parse(req.responseText)); $("err").textContent = ""; }
    catch (e) { $("err").textContent = "bad status: " + e; }
  };
  req.onerror = req.ontimeout = function () { $("err").textContent = "inspector not reachable"; };
  req.onloadend = function () { setTimeout(poll, 1000); };
  req.send();
}
var live = $("live");
if (/[?&]mode=snapshot/.test(location.search)) {   // a still a second: slow links, headless checks
  var still = function () { live.src = "/snapshot.jpg?" + Date.now(); };
  live.onload = live.onerror = function () { setTimeout(still, 1000); };
  still();
} else {
  live.onerror = function () {   // the stream ended (restart, too many viewers): retry
    setTimeout(function () { live.src = "/stream.mjpg?" + Date.now(); }, 2000);
  };
  live.src = "/stream.mjpg";
}
poll();
</script>
</body></html>
"""
