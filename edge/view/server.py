"""The live view: a small web page for the line engineer, served from the line-side box.

    view = LiveView(host="127.0.0.1", port=8080).start()
    view.update(image_rgb, amap, decision, threshold)   # per frame: stores references only
    view.set_status(run_status)                          # a RunStatus, every status period
    view.close()

URLs (no external JS or CSS: plants are offline):
  /             one HTML page (page.html beside this module, package data): the latest frame
                with its heat-map overlay (MJPEG) and a status panel that polls /status.json
                every second
  /?mode=snapshot  the same page with a still a second (/snapshot.jpg) instead of the stream:
                for slow links, and for headless browsers (an endless stream keeps their
                virtual time from advancing)
  /stream.mjpg  multipart/x-mixed-replace JPEG stream, at most `max_fps` frames a second
  /snapshot.jpg the latest frame with its overlay (a grey "waiting" image before the first)
  /camera/ID.jpg  with several cameras: camera ID's latest frame with its overlay (the page's
                tiles; the stream and /snapshot.jpg show the first camera)
  /status.json  {"status": the run's status (edge.common.status, versioned), "health": {ok,
                reason}, "verdicts": the last ones, "trend": [[wall, score, reject]] of the last
                `trend_s` seconds, "frame": {seq, age_s}, "status_age_s"}; with several
                cameras also "tiles": {camera: its last verdict and frame age}
  /healthz      200 "ok" when healthy; 503 with the reason when a fault is active, a part
                (source, engine, line) is faulted, no status was set yet, or the status is
                older than `stale_s` (the pipeline stopped reporting). Open without a token: it
                is what the deploy health check and `edge check` ask.
  /metrics      Prometheus text format (edge/view/metrics.py)
  /gallery.json the last `gallery` flagged records with a saved image, from the record store
  /record/ID.jpg  a record's saved image (image, heat map, caption), full size

Access: with a `token` (required by the configuration off loopback) every URL but /healthz
needs it, as HTTP basic auth (any user name, the token as password: browsers ask once) or
`Authorization: Bearer TOKEN` (Prometheus' bearer_token). Never in the URL, and requests are
not logged.

Cost on the frame path: update() keeps references under a lock and appends a small dict to a
ring of recent verdicts. JPEG encoding (overlay, caption, resize to `max_width`, encode) runs
in a server thread, only while a client asks for a frame, at most `max_fps` times a second,
and only for a frame not encoded yet. The caller must not modify the arrays it passed (the
pipeline hands over each frame's own arrays, so this holds).
"""

import collections
import functools
import hmac
import json
import os
import base64
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import numpy as np

from ..common.errors import EdgeError
from ..common.fsutil import json_default
from .metrics import CONTENT_TYPE as METRICS_TYPE, Metrics

BOUNDARY = "edgeframe"
PAGE_FILE = "page.html"


class LiveView:
    def __init__(self, host="127.0.0.1", port=8080, max_fps=10.0, max_width=960, jpeg_quality=80,
                 verdicts=20, stale_s=10.0, max_streams=4, token=None, store=None, gallery=12,
                 trend_s=300.0):
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
        self._main = None               # with several cameras: the one the stream shows
        self._tiles = {}                # camera -> [frame tuple, version]
        self._tile_jpeg = {}            # camera -> (version, bytes, monotonic time of encoding)
        self._encode_lock = threading.Lock()
        self._status = None
        self._status_t = None
        self._verdicts = collections.deque(maxlen=int(verdicts))
        self._streams = 0
        self._closing = threading.Event()
        self._server = None
        self._thread = None
        self.encodes = 0                # JPEG encodings done (for tests and the bench)
        self.token = token              # a Secret (edge.outputs.secrets) or str; None: no check
        self.store, self.gallery_n = store, int(gallery)
        self.trend_s = float(trend_s)
        self._trend = collections.deque(maxlen=6000)    # (wall, score, reject), newest last
        self.metrics = Metrics()

    # ---------------------------------------------------------------- the pipeline's side

    def start(self):
        page()                          # a package without its page fails here, not at a request
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

    def access(self):
        """How the view is protected, for the start-up log line."""
        return "token required" if self.token is not None else "no token (loopback only)"

    @property
    def url(self):
        return f"http://{self.host}:{self.port}/"

    def set_cameras(self, ids):
        """A run with several cameras: their ids in order; the first is the stream's."""
        with self._lock:
            self._main = ids[0] if ids else None
            for cid in ids:
                self._tiles.setdefault(cid, [None, 0])

    def update(self, image_rgb, amap, decision, threshold, camera=None):
        """Keep the latest frame (references only) and its verdict; `camera` names the camera
        of a run with several (its tile; the trend and the stream are the first camera's)."""
        v = {"seq": decision.seq, "wall": decision.wall, "score": round(float(decision.score), 6),
             "reject": bool(decision.reject), "reason": decision.reason,
             "latency_ms": round(float(decision.latency_s) * 1000, 2), "part_id": decision.part_id}
        if camera is not None:
            v["camera"] = camera
        engine_ms = (decision.extra or {}).get("engine_ms")
        batch = (decision.extra or {}).get("batch") or 1
        self.metrics.observe(float(decision.latency_s), None if engine_ms is None else engine_ms / 1000 / batch)
        frame = (image_rgb, amap, decision, threshold)
        with self._lock:
            self._verdicts.append(v)
            if camera is not None:
                tile = self._tiles.setdefault(camera, [None, 0])
                tile[0], tile[1] = frame, tile[1] + 1
                if self._main is None:
                    self._main = camera
                if camera != self._main:
                    return
            self._frame = frame
            self._version += 1
            self._trend.append((round(decision.wall, 2), v["score"], v["reject"]))
            self._new_frame.notify_all()

    def set_status(self, status):
        """The run's status: a RunStatus (edge.common.status) or its dict."""
        from ..common.status import RunStatus
        st = status if isinstance(status, RunStatus) else RunStatus.from_dict(status)
        with self._lock:
            self._status = st
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
        ok, reason = status.health()
        if not ok:
            return ok, reason
        if self.stale_s and time.monotonic() - t > self.stale_s:
            return False, f"status not updated for {time.monotonic() - t:.0f} s"
        return True, "ok"

    def status_json(self):
        ok, reason = self.health()
        with self._lock:
            st = self._status
            out = {"status": None if st is None else st.to_dict()}
            out["verdicts"] = list(reversed(self._verdicts))
            trend = list(self._trend)
            frame = self._frame
            tiles = {cid: tuple(t) for cid, t in self._tiles.items()}
            status_age = None if self._status_t is None else time.monotonic() - self._status_t
        since = time.time() - self.trend_s
        trend = [p for p in trend if p[0] >= since]
        step = max(1, len(trend) // 600)                      # at most ~600 points to draw
        out["trend"] = trend[::step] if step == 1 else [max(trend[i:i + step], key=lambda p: p[1])
                                                       for i in range(0, len(trend), step)]
        out["trend_s"] = self.trend_s
        out["health"] = {"ok": ok, "reason": reason}
        out["status_age_s"] = None if status_age is None else round(status_age, 2)
        if frame is not None:
            out["frame"] = {"seq": frame[2].seq, "age_s": round(time.time() - frame[2].wall, 2)}
        if tiles:
            out["tiles"] = {cid: _tile(t[0], t[1]) for cid, t in tiles.items()}
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

    def camera_jpeg(self, camera):
        """Camera `camera`'s latest frame as JPEG bytes (None: no such camera), encoded once per
        frame and at most `max_fps` times a second per camera."""
        with self._encode_lock:
            with self._lock:
                tile = self._tiles.get(camera)
                if tile is None:
                    return None
                frame, version = tile
                cached = self._tile_jpeg.get(camera)
            if frame is None:
                return _placeholder(self.jpeg_quality) if cached is None else cached[1]
            now = time.monotonic()
            if cached is not None and (cached[0] == version or (self.max_fps > 0 and now - cached[2] < 1.0 / self.max_fps)):
                return cached[1]
            data = self._encode(*frame)
            self.encodes += 1
            self._tile_jpeg[camera] = (version, data, time.monotonic())
            return data

    def _encode(self, image_rgb, amap, decision, threshold):
        from .overlay import encode_verdict

        text = f"#{decision.seq} {'REJECT' if decision.reject else 'OK'}"     # the page shows the rest
        return encode_verdict(image_rgb, amap, threshold, text, decision.reject, ".jpg", self.jpeg_quality,
                              max_width=self.max_width)

    # ---------------------------------------------------------------- what the HTTP handler asks

    def authorised(self, header):
        """Whether an Authorization header value carries the token (always, without one)."""
        if self.token is None:
            return True
        want = self.token.reveal() if hasattr(self.token, "reveal") else str(self.token)
        given = ""
        header = header or ""
        if header.startswith("Bearer "):
            given = header[7:].strip()
        elif header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                given = ""
        return hmac.compare_digest(given.encode("utf-8"), want.encode("utf-8"))

    def metrics_text(self):
        ok, _ = self.health()
        with self._lock:
            st = self._status
        return self.metrics.render(st, ok)

    def gallery_json(self):
        """The last flagged records with a saved image, newest first (empty without a store)."""
        items = []
        if self.store is not None and self.gallery_n > 0:
            for r in self.store.flagged(self.gallery_n):
                items.append({"id": r["id"], "seq": r["seq"], "wall": r["wall"], "score": r["score"],
                              "threshold": r["threshold"], "reason": r["reason"], "part_id": r["part_id"],
                              "url": f"/record/{r['id']}.jpg"})
        return json.dumps({"items": items}, default=json_default).encode("utf-8")

    def record_image(self, rid):
        """(bytes, content type) of record `rid`'s saved image, or None."""
        if self.store is None:
            return None
        path = self.store.image_of(rid)
        if path is None or not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            data = f.read()
        return data, "image/png" if path.endswith(".png") else "image/jpeg"

    @contextmanager
    def stream_slot(self):
        """One viewer's place among at most `max_streams`: yields True when there was one free
        (held until the block ends), False when all are taken."""
        with self._lock:
            free = self._streams < self.max_streams
            if free:
                self._streams += 1
        try:
            yield free
        finally:
            if free:
                with self._lock:
                    self._streams -= 1

    def frames(self):
        """JPEG frames for one stream: each new frame once, at most `max_fps` a second (shared
        with the other viewers through jpeg()), until the view closes."""
        sent, last_t = -1, 0.0
        period = 1.0 / self.max_fps if self.max_fps > 0 else 0.0
        while not self._closing.is_set():
            if self.wait_frame(sent if sent > 0 else 0, 1.0) <= sent:
                continue                                  # nothing new yet
            gap = period - (time.monotonic() - last_t)
            if gap > 0 and self._closing.wait(gap):       # the rate cap
                return
            version, data = self.jpeg()
            if version == sent:   # within another viewer's cap: wait for the next encoding slot
                if self._closing.wait(max(0.005, period - (time.monotonic() - self._last_encode))):
                    return
                continue
            sent, last_t = version, time.monotonic()
            yield data


def _tile(frame, version):
    if frame is None:
        return {"seq": None, "version": version}
    d, thr = frame[2], frame[3]
    return {"seq": d.seq, "version": version, "score": round(float(d.score), 6), "threshold": float(thr),
            "reject": bool(d.reject), "reason": d.reason, "latency_ms": round(float(d.latency_s) * 1000, 2),
            "part_id": d.part_id, "age_s": round(time.time() - d.wall, 2)}


def _placeholder(quality):
    import cv2

    from .overlay import encode

    img = np.full((240, 320, 3), 60, np.uint8)
    cv2.putText(img, "waiting for frames", (50, 125), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (220, 220, 220), 1, cv2.LINE_AA)
    return encode(img, ".jpg", quality)


@functools.lru_cache(maxsize=None)
def page():
    """The live page (edge/view/page.html, package data), as bytes."""
    try:
        return resources.files(__package__).joinpath(PAGE_FILE).read_bytes()
    except OSError as exc:
        raise EdgeError(f"live page missing from the installed package ({exc.strerror})", PAGE_FILE) from None


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
            if path != "/healthz" and not view.authorised(self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="line inspection", charset="UTF-8"')
                self.send_header("Content-Length", "13")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(b"unauthorised\n")
                return
            if path in ("/", "/index.html"):
                self._send(200, page(), "text/html; charset=utf-8")
            elif path == "/status.json":
                self._send(200, view.status_json(), "application/json")
            elif path == "/healthz":
                ok, reason = view.health()
                self._send(200 if ok else 503, (reason + "\n").encode("utf-8"), "text/plain; charset=utf-8")
            elif path == "/snapshot.jpg":
                version, data = view.jpeg()
                self._send(200, data, "image/jpeg")
            elif path.startswith("/camera/") and path.endswith(".jpg"):
                data = view.camera_jpeg(path[8:-4])
                if data is None:
                    self._send(404, b"no such camera\n", "text/plain")
                else:
                    self._send(200, data, "image/jpeg")
            elif path == "/stream.mjpg":
                self._stream(view)
            elif path == "/metrics":
                self._send(200, view.metrics_text(), METRICS_TYPE)
            elif path == "/gallery.json":
                self._send(200, view.gallery_json(), "application/json")
            elif path.startswith("/record/") and path.endswith(".jpg") and path[8:-4].isdigit():
                got = view.record_image(int(path[8:-4]))
                if got is None:
                    self._send(404, b"no image for this record\n", "text/plain")
                else:
                    self._send(200, got[0], got[1])
            else:
                self._send(404, b"not found\n", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream(self, view):
        with view.stream_slot() as free:
            if not free:
                self._send(503, b"too many live streams\n", "text/plain")
                return
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            for data in view.frames():
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                                 .encode("ascii") + data + b"\r\n")
                self.wfile.flush()
