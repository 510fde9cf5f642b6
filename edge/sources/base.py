"""The source object the pipeline holds: a capture thread, reconnect with back-off,
outage events, and a small bounded hand-over buffer.

A backend supplies an opener: a callable that returns a capture object with
`grab(timeout) -> RGB ndarray | None`, `close()` and `describe()`. The opener raises
`Lost` when the camera cannot be reached (retried with back-off) and `EdgeError` when the
configuration is wrong (reported to the user). `grab` raises `Lost` when the camera
drops out and `EndOfStream` at the end of a finite source.
"""

import collections
import threading
import time

import numpy as np

from ..common.errors import EdgeError
from ..runtime.types import Frame
from .backoff import Backoff
from .uri import mask_credentials


MAX_FRAME_PIXELS = 1 << 28     # 268 MP (16384 x 16384): above any area-scan camera; 800 MB in RGB


class SourceEnded(Exception):
    """read() after a finite source (file, folder) delivered its last frame."""


class Lost(Exception):
    """The camera or stream cannot be reached now; try again later."""


class EndOfStream(Exception):
    """A finite source has no more frames."""


def _reconnect_options(options):
    rc = options.get("reconnect") or {}
    if not isinstance(rc, dict):
        raise EdgeError("must be a mapping with initial_s and max_s", "reconnect")
    try:
        return Backoff(float(rc.get("initial_s", 0.5)), float(rc.get("max_s", 10.0)))
    except (TypeError, ValueError) as exc:
        raise EdgeError(f"bad back-off ({exc}): {rc!r}", "reconnect") from None


class Source:
    """One capture source. Threads: the caller's (read) and one capture thread."""

    def __init__(self, spec, opener, options, backend, plan=""):
        self.spec = spec
        self._opener = opener
        self._backend = backend
        self._options = options
        self._backoff = _reconnect_options(options)
        self._drop = bool(options.get("drop", False))
        self._loop = bool(options.get("loop", False))
        stall = options.get("stall_s", 0.0 if spec.finite else 10.0)
        self._stall_s = float(stall or 0.0)
        self._size = _size_option(options)
        self._cap = None
        self._described = f"{backend}: {mask_credentials(plan)}"
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._buf = collections.deque()
        self._maxlen = 1 if self._drop else 2
        self._events = []
        self._stop = threading.Event()
        self._thread = None
        self._ended = False
        self._error = None
        self._connected = False
        self._lost_at = None
        self._seq = 0
        self._outages = 0
        self._dropped = 0
        self._times = collections.deque(maxlen=30)
        self._last_frame_t = 0.0
        self._closers = []

    # -- the interface the pipeline uses ---------------------------------------------------
    def start(self):
        if self._thread is not None:
            return self
        try:
            self._cap = self._opener()
            self._described = f"{self._backend}: {mask_credentials(self._cap.describe())}"
        except Lost as exc:
            if self.spec.finite:
                raise EdgeError(f"cannot open: {exc}", self._where()) from None
            self._mark_lost(f"cannot open: {exc}")
        except EdgeError:
            raise
        except Exception as exc:        # a backend failing in a way nobody foresaw: one line, no traceback
            raise EdgeError(f"cannot open: {type(exc).__name__}: {_one_line(exc)}", self._where()) from None
        self._thread = threading.Thread(target=self._run, name=f"source {self._where()}", daemon=True)
        self._thread.start()
        return self

    def read(self, timeout=1.0):
        """The next frame, None after `timeout` seconds without one; SourceEnded at the end."""
        if self._thread is None:
            raise RuntimeError("Source.read() before start()")
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        with self._ready:
            while True:
                if self._stop.is_set():
                    raise SourceEnded(f"{self._where()} is closed")
                if self._buf:
                    break
                if self._error is not None:
                    err, self._error = self._error, None
                    raise err
                if self._ended:
                    raise SourceEnded(self._where())
                if not self._thread.is_alive():
                    raise EdgeError("the capture thread stopped without a reason", self._where())
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._ready.wait(left)
            frame = self._buf.popleft()
            self._ready.notify_all()
            return frame

    def events(self):
        with self._lock:
            out, self._events = self._events, []
            return out

    def stats(self):
        with self._lock:
            times = list(self._times)
            fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
            return {"frames": self._seq, "outages": self._outages, "connected": self._connected,
                    "fps": round(fps, 2), "dropped": self._dropped}

    def describe(self):
        return self._described

    def close(self):
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._cap is not None and (self._thread is None or not self._thread.is_alive()):
            self._close_cap()
        end = time.monotonic() + 10
        for t in self._closers:
            t.join(timeout=max(0.0, end - time.monotonic()))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- the capture thread ------------------------------------------------------------------
    def _where(self):
        return f"source {mask_credentials(self.spec.uri)!r}"

    def _event(self, kind, detail, **extra):
        ev = {"t": time.time(), "kind": kind, "detail": mask_credentials(detail)}
        ev.update(extra)
        self._events.append(ev)

    def _mark_lost(self, detail):
        """Start an outage (once): it is timed from the last frame, if there was one."""
        with self._lock:
            if self._lost_at is None:
                self._lost_at = self._last_frame_t if self._connected else time.monotonic()
                self._outages += 1
                self._connected = False
                self._event("lost", detail)

    def _close_cap(self, wait=True):
        """Close the capture. A lost camera can take seconds to let go (Aravis retries its
        commands), so after an outage the old capture is closed in a thread of its own and
        reconnecting does not wait for it."""
        cap, self._cap = self._cap, None
        if cap is None:
            return
        if wait:
            _close_quietly(cap)
        else:
            self._closers = [t for t in self._closers if t.is_alive()]
            t = threading.Thread(target=_close_quietly, args=(cap,), name="source closer", daemon=True)
            t.start()
            self._closers.append(t)

    def _finish(self, error=None, detail="end of stream"):
        with self._ready:
            self._ended = True
            self._connected = False
            if error is not None:
                self._error = error
            self._event("ended", detail)
            self._ready.notify_all()

    def _run(self):
        """The capture thread. Whatever ends it ends the source in a way read() reports: an
        unexpected exception (an allocation failure, a decoder bug) becomes the source's error,
        so the reader never waits for frames that will not come."""
        try:
            self._capture()
        except BaseException as exc:
            detail = f"capture failed: {type(exc).__name__}: {_one_line(exc)}"
            try:
                self._close_cap(wait=False)
            finally:
                self._finish(EdgeError(detail, self._where()), f"error: {detail}")

    def _capture(self):
        last_ok = time.monotonic()
        while not self._stop.is_set():
            if self._cap is None:
                if self._stop.wait(self._backoff.next_delay()):
                    break
                try:
                    self._cap = self._opener()
                    self._described = f"{self._backend}: {mask_credentials(self._cap.describe())}"
                except Lost as exc:
                    self._mark_lost(f"cannot open: {exc}")
                    continue
                except EdgeError as exc:    # e.g. the file went away: keep trying, say why
                    self._mark_lost(str(exc))
                    continue
                last_ok = time.monotonic()
            try:
                img = self._cap.grab(0.2)
            except EndOfStream:
                ends = self.spec.finite or self.spec.kind == "gst"   # a raw pipeline that ends, ends
                self._close_cap(wait=ends)
                if ends:
                    if self._loop:
                        self._backoff.reset()
                        try:
                            self._cap = self._opener()
                            continue
                        except (Lost, EdgeError) as exc:
                            self._finish(EdgeError(f"cannot reopen to loop: {exc}", self._where()))
                            return
                    self._finish()
                    return
                self._mark_lost("end of stream from a live source")
                continue
            except Lost as exc:
                self._close_cap(wait=self.spec.finite)
                if self.spec.finite:
                    self._finish(EdgeError(f"cannot read: {exc}", self._where()), f"error: {exc}")
                    return
                self._mark_lost(str(exc))
                continue
            except EdgeError as exc:        # e.g. a corrupt image in a folder
                self._close_cap()
                self._finish(exc, f"error: {exc}")
                return
            now = time.monotonic()
            if img is None:
                if self._stall_s and now - last_ok > self._stall_s:
                    self._close_cap(wait=False)
                    self._mark_lost(f"no frame for {self._stall_s:g} s")
                continue
            self._deliver(self._fit(img), now)
            last_ok = time.monotonic()

    def _fit(self, img):
        if self._size is not None and (img.shape[1], img.shape[0]) != self._size:
            import cv2
            img = cv2.resize(img, self._size, interpolation=cv2.INTER_AREA)
        return img

    def _deliver(self, img, t_capture):
        with self._ready:
            if self._lost_at is not None or not self._connected:
                if self._lost_at is not None:
                    outage = t_capture - self._lost_at
                    self._event("reopened", self._described, outage_s=round(outage, 3))
                    self._lost_at = None
                self._connected = True
                self._backoff.reset()
            frame = Frame(seq=self._seq, t_capture=t_capture, wall=time.time(), image=img)
            self._seq += 1
            self._times.append(t_capture)
            self._last_frame_t = t_capture
            if self._drop:
                while len(self._buf) >= self._maxlen:
                    self._buf.popleft()
                    self._dropped += 1
            else:   # inspect-all: wait for the reader (back-pressure reaches the camera)
                while len(self._buf) >= self._maxlen and not self._stop.is_set():
                    self._ready.wait(0.2)
            self._buf.append(frame)
            self._ready.notify_all()


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text[:300] if text else "(no message)"


def _close_quietly(cap):
    try:
        cap.close()
    except Exception:  # a capture that fails to close must not stop the reconnect loop
        pass


def _size_option(options):
    w, h = options.get("width"), options.get("height")
    if w is None and h is None:
        return None
    try:
        w, h = int(w), int(h)
        if w <= 0 or h <= 0:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise EdgeError(f"width and height must both be positive integers, got {w!r} x {h!r}",
                        "source options") from None
    if w * h > MAX_FRAME_PIXELS:
        raise EdgeError(f"{w} x {h} is {w * h:,} pixels a frame, over the limit of {MAX_FRAME_PIXELS:,}",
                        "source options") from None
    return (w, h)


def to_rgb(img, order):
    """An OpenCV-style array (BGR, BGRA or gray) to H x W x 3 uint8 RGB (one copy)."""
    if img.ndim == 2:
        out = np.empty(img.shape + (3,), np.uint8)
        out[...] = img[..., None]
        return out
    if order == "BGR":
        return np.ascontiguousarray(img[..., 2::-1])
    return np.ascontiguousarray(img[..., :3])
