"""Parts seen by several cameras: the views of one part are tied together by a part id (a
counter read at capture: encoder count or PLC trigger number; or the capture time), and the
part's verdict is the configured combination of its views' verdicts. The part is decided once:
when every camera of the group has given a view, or at its deadline (then the fail-safe verdict
for a part a camera did not see), and the verdict is sent once to the part's ejector."""

import collections
import logging
import threading
import time

from .types import Decision

log = logging.getLogger(__name__)


def combine(rule, per_camera):
    """per_camera: {camera: reject?} of the views that arrived. The part's reject."""
    votes = list(per_camera.values())
    if not votes:
        return True
    if rule == "all":
        return all(votes)
    if rule == "majority":
        return sum(votes) * 2 > len(votes)
    return any(votes)


class _Part:
    __slots__ = ("number", "t0", "wall", "deadline", "views", "scores")

    def __init__(self, number, t0, wall, deadline):
        self.number, self.t0, self.wall, self.deadline = number, t0, wall, deadline
        self.views = collections.OrderedDict()       # camera -> [(seq, reject)]
        self.scores = []


class PartJoiner:
    """view() from the decide stages, a thread for deadlines; `record(kind, detail)` gets one
    `part` record per part (and `view_after_part` for a view that came after its part was
    decided); `line` (a LineIO, optional) is the part's ejector."""

    def __init__(self, cfg, line=None, record=None, counter=None):
        self.cfg, self.line, self.record, self.counter = cfg, line, record, counter
        self.cameras = tuple(cfg.cameras)
        self.deadline_s = cfg.deadline_ms / 1000
        self.tolerance_s = cfg.tolerance_ms / 1000
        self._lock = threading.Lock()
        self._pending = collections.OrderedDict()     # number -> _Part, oldest first
        self._done = collections.OrderedDict()        # number -> reject, recent
        self._next = 0
        self.counts = collections.Counter()
        self.recent = collections.deque(maxlen=20)    # the latest part verdicts, for the status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._deadlines, name="edge-parts", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def key_at_capture(self):
        """The part id read when a frame is captured (None: matched by capture time)."""
        if self.counter is None:
            return None
        return int(self.counter.count()) // self.cfg.per_part

    def view(self, camera, d, key=None):
        """One camera's verdict on its frame of a part; returns the part number."""
        ready = None
        with self._lock:
            number = key if key is not None else self._match(camera, d.t_capture)
            if number in self._done:
                self.counts["after_part"] += 1
                late = {"camera": camera, "part": number, "seq": d.seq, "reject": bool(d.reject)}
            else:
                late = None
                part = self._pending.get(number)
                if part is None:
                    part = self._pending[number] = _Part(number, d.t_capture, d.wall, d.t_capture + self.deadline_s)
                    self._expect(part)
                part.views.setdefault(camera, []).append((d.seq, bool(d.reject)))
                part.scores.append(float(d.score))
                if all(c in part.views for c in self.cameras):
                    ready = self._pending.pop(number)
        if late is not None:
            self._record("view_after_part", late)
        if ready is not None:
            self._decide(ready, missing=())
        return number

    def _match(self, camera, t):
        for part in self._pending.values():
            if camera not in part.views and abs(t - part.t0) <= self.tolerance_s:
                return part.number
        self._next += 1
        return self._next

    def _expect(self, part):
        if self.line is not None:
            self.line.expect(part.number, part.t0, None, str(part.number))

    def _decide(self, part, missing):
        per_camera = {c: any(r for _, r in v) for c, v in part.views.items()}
        if missing:
            reject = self.cfg.failsafe == "reject"
            reason = "failsafe:missing:" + ",".join(missing)
            self.counts["failsafe"] += 1
        else:
            reject = combine(self.cfg.combine, per_camera)
            reason = f"{self.cfg.combine}:" + (",".join(c for c, r in per_camera.items() if r) or "ok")
        with self._lock:
            self._done[part.number] = reject
            while len(self._done) > 4096:
                self._done.popitem(last=False)
        self.counts["parts"] += 1
        self.counts["rejects"] += reject
        now = time.monotonic()
        if self.line is not None:
            self.line.decide(Decision(part.number, part.t0, part.wall, max(part.scores, default=0.0), reject,
                                      reason, now - part.t0, 0.0, None, str(part.number),
                                      {"cameras": sorted(per_camera)}))
        result = {"part": part.number, "reject": reject, "reason": reason,
                  "views": {c: [s for s, _ in v] for c, v in part.views.items()},
                  "rejects": per_camera, "missing": list(missing), "latency_ms": round((now - part.t0) * 1000, 2)}
        self.recent.append(result)
        self._record("part", result)

    def _record(self, kind, detail):
        if self.record is not None:
            try:
                self.record(kind, detail)
            except Exception as exc:            # the store must not stop the line
                log.error("edge: cannot record %s: %s", kind, exc)

    def _expire(self, now):
        with self._lock:
            due = [p for p in self._pending.values() if p.deadline <= now]
            for p in due:
                del self._pending[p.number]
        for p in due:
            self._decide(p, missing=tuple(c for c in self.cameras if c not in p.views))

    def _deadlines(self):
        while not self._stop.wait(0.005):
            self._expire(time.monotonic())

    def close(self):
        """Parts still waiting for a view get the fail-safe verdict now."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._expire(float("inf"))

    def stats(self):
        with self._lock:
            pending = len(self._pending)
        c = self.counts
        return {"parts": c["parts"], "rejects": c["rejects"], "failsafe": c["failsafe"],
                "after_part": c["after_part"], "pending": pending, "recent": list(self.recent)}
