"""The line-side pipeline: capture -> preprocess -> infer -> decide -> act / record / view.

Each stage runs in its own thread, joined by bounded queues. Every frame keeps its sequence
number and capture time from the source to the record, so a decision names its frame.
  inspect-all: the capture stage waits when the queue is full (back-pressure): every
               captured frame gets a verdict.
  latest:      the oldest queued frame is dropped instead; every drop is counted and
               recorded, and the line's fail-safe handles the part that got no verdict.
A stage that raises anything at all (a source error, an engine error, a bug) faults the run:
capture stops, the line outputs get the fault (heartbeat stops, fail-safe acts), the error is
recorded, and run_pipeline raises it once the frames in flight are drained (edge run exits 3).
stop() (SIGTERM) lets in-flight frames finish and be recorded before the run ends."""

import collections
import logging
import math
import queue
import threading
import time

import numpy as np

from ..common.errors import EdgeError
from ..sources import SourceEnded
from .config import PipelineSettings
from .types import Decision

_END = object()
log = logging.getLogger(__name__)
_FAULT_KINDS = {"capture": "source", "infer": "engine", "decide": "queue", "record": "records"}


def describe_error(exc):
    """One line for an exception: the toolkit's own errors as they are (they name the file or
    key), anything else with its type, since it is a fault nobody foresaw."""
    if isinstance(exc, EdgeError):
        return str(exc)
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def judge(frame, amap, score, thr, min_area, deadline_s, who=""):
    """One frame's verdict: (reject, reason, latency s, defective area share). A non-finite
    score or map is a fault (EdgeError naming `who` and the frame), never a pass."""
    if not (math.isfinite(score) and np.isfinite(amap).all()):   # NaN passes every `>=`
        raise EdgeError(f"engine returned a non-finite {'score' if not math.isfinite(score) else 'anomaly map'} "
                        f"for {who}frame {frame.seq} (score {score}): a fault, never a pass")
    area = float(np.count_nonzero(amap >= thr)) / amap.size
    over = score >= thr
    reject = over and area >= min_area
    reason = "score" if reject else ("small" if over else "ok")
    latency = time.monotonic() - frame.t_capture
    if latency > deadline_s:
        reason = "late"
    return reject, reason, latency, area


class Stats:
    """Counters and a window of recent latencies, shared between stages."""

    def __init__(self, window=2000):
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.captured = self.decided = self.rejects = self.dropped = self.late = self.outages = 0
        self.latency = collections.deque(maxlen=window)     # capture -> decision, s
        self.added = collections.deque(maxlen=window)       # latency minus engine time, s
        self.engine = collections.deque(maxlen=window)      # engine time per frame, s
        self.engine_total = 0.0
        self.t_first = self.t_last = None

    def decision(self, d, engine_s, batch):
        with self.lock:
            self.decided += 1
            self.rejects += d.reject
            self.late += d.reason == "late"
            self.latency.append(d.latency_s)
            self.added.append(d.latency_s - engine_s)
            self.engine.append(engine_s / batch)
            now = time.monotonic()
            self.t_first = self.t_first or now
            self.t_last = now

    @staticmethod
    def merged(all_stats):
        """One snapshot over several cameras' Stats: counts and frames/s summed, percentiles
        over their windows together."""
        out = Stats(window=None)         # every camera's window, whole
        fps = 0.0
        for st in all_stats:
            snap = st.snapshot()
            fps += snap["fps"]
            with st.lock:
                for k in ("captured", "decided", "rejects", "dropped", "late", "outages"):
                    setattr(out, k, getattr(out, k) + getattr(st, k))
                out.latency.extend(st.latency)
                out.added.extend(st.added)
                out.engine.extend(st.engine)
                out.t0 = min(out.t0, st.t0)
        snap = out.snapshot()
        snap["fps"] = fps
        return snap

    def snapshot(self):
        with self.lock:
            lat = np.array(self.latency) * 1000 if self.latency else np.zeros(1)
            add = np.array(self.added) * 1000 if self.added else np.zeros(1)
            span = (self.t_last - self.t_first) if self.t_first and self.t_last and self.decided > 1 else 0
            return {"captured": self.captured, "decided": self.decided, "rejects": self.rejects,
                    "dropped": self.dropped, "late": self.late, "outages": self.outages,
                    "fps": (self.decided - 1) / span if span > 0 else 0.0,
                    "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p95": float(np.percentile(lat, 95)),
                    "latency_ms_p99": float(np.percentile(lat, 99)),
                    "added_ms_p50": float(np.percentile(add, 50)), "added_ms_p95": float(np.percentile(add, 95)),
                    "engine_ms_per_frame": float(np.mean(self.engine) * 1000) if self.engine else 0.0,
                    "elapsed_s": time.monotonic() - self.t0}


class Pipeline:
    """The stages between a source and its outputs. `settings` (a PipelineSettings, usually
    RunConfig.pipeline()) holds the mode, batch, queue size, decision area, deadline, frame
    limit and what the store keeps; store, line and view are optional sinks."""

    def __init__(self, source, preprocess, engine, threshold, settings=None, *, store=None, line=None,
                 view=None, on_reject=None):
        s = settings if settings is not None else PipelineSettings()
        self.settings = s
        self.source, self.pre, self.engine = source, preprocess, engine
        self.threshold, self.min_area, self.deadline_s = float(threshold), float(s.min_area), s.deadline_ms / 1000
        if not math.isfinite(self.threshold):
            raise EdgeError(f"threshold must be a finite number, got {threshold}")
        self.mode, self.batch, self.max_frames = s.mode, max(1, int(s.batch)), s.max_frames
        self.store, self.line, self.view, self.save = store, line, view, s.save
        self.on_reject = on_reject
        self.q_in = queue.Queue(s.queue_size)
        self.q_out = queue.Queue(s.queue_size)
        self.q_rec = queue.Queue(max(64, s.queue_size * 4))
        self.stats = Stats()
        self.stopping = threading.Event()
        self.errors = []
        self._failed = set()
        self.identity = {}              # bundle_id, method, engine, precision, version: for the status
        self._threads = []

    # ---- control -------------------------------------------------------------------------
    def start(self):
        for name, fn in (("capture", self._capture), ("infer", self._infer), ("decide", self._decide),
                         ("record", self._record)):
            t = threading.Thread(target=self._guard, args=(name, fn), name=f"edge-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        """Stop capturing; frames already captured are still decided and recorded."""
        self.stopping.set()

    def status(self):
        """The run's status as published (edge.common.status.RunStatus)."""
        from ..common.status import build
        return build(self.stats.snapshot(), source=self.source, engine_name=getattr(self.engine, "name", ""),
                     errors=self.errors, line=self.line, threshold=self.threshold, identity=self.identity,
                     ended=bool(self._threads) and not self.running())

    def running(self):
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running()

    def _guard(self, name, fn):
        try:
            fn()
        except BaseException as exc:              # a stage's failure must reach the line and the records
            self.fault(name, exc)
            self._drain_after_failure(name)

    def fault(self, stage, error, kind=None):
        """Fault the run: capture stops, the line hears it (heartbeat stops, the configured
        fail-safe acts), the records and `errors` (hence the summary and exit status) say why.
        `error` is an exception or a message; `kind` the line's fault kind (by stage if None)."""
        msg = error if isinstance(error, str) else describe_error(error)
        self.errors.append(f"{stage}: {msg}")
        self.stopping.set()                       # first: whatever fails below, capture ends
        self._failed.add(stage)
        self._event(f"{stage}_error", {"error": msg})
        if self.line is not None:
            try:
                self.line.fault(kind or _FAULT_KINDS.get(stage, "queue"), f"{stage}: {msg}")
            except Exception as exc:
                log.error("edge: cannot signal the fault to the line: %s", describe_error(exc))

    def _drain_after_failure(self, name):
        """Keep the stages ending in order after one died; frames it leaves are reported."""
        upstream = {"infer": self.q_in, "decide": self.q_out, "record": self.q_rec}.get(name)
        downstream = {"infer": self.q_out, "decide": self.q_rec}.get(name)
        if upstream is not None:
            self._discard(upstream, f"{name} failed")
        if downstream is not None:
            downstream.put(_END)

    def _discard(self, q, why):
        kind = "unrecorded" if q is self.q_rec else "undecided"     # decided, told to the line, not recorded
        while True:
            try:
                item = q.get(timeout=5.0)
            except queue.Empty:
                return
            if item is _END:
                return
            self._event(kind, {"seq": item[0].seq, "why": why})

    def _in_hand(self, kind, seqs, stage):
        """Frames a stage held when it failed: each named in an event (the line's fail-safe
        handles their parts; a decided one was already told to the line)."""
        for seq in seqs:
            self._event(kind, {"seq": seq, "why": f"{stage} failed"})

    def _event(self, kind, detail):
        if self.store is not None:
            try:
                self.store.event(kind, detail)
            except Exception as exc:             # a broken store must not stop the line
                if kind != "record_error":
                    log.error("edge: cannot record event %s: %s", kind, exc)

    # ---- stages --------------------------------------------------------------------------
    def _capture(self):
        last_seq = None
        try:
            while not self.stopping.is_set():
                try:
                    frame = self.source.read(timeout=0.5)
                except SourceEnded:
                    break
                self._source_events()
                if frame is None:
                    continue
                if last_seq is not None and frame.seq > last_seq + 1:
                    with self.stats.lock:
                        self.stats.dropped += frame.seq - last_seq - 1
                    self._event("dropped", {"from_seq": last_seq + 1, "count": frame.seq - last_seq - 1, "at": "source"})
                last_seq = frame.seq
                if self.line is not None:
                    self.line.expect(frame.seq, frame.t_capture, frame.encoder, frame.part_id)
                try:
                    item = (frame, self.pre(frame.image))
                except BaseException:
                    self._in_hand("undecided", [frame.seq], "capture")
                    raise
                with self.stats.lock:
                    self.stats.captured += 1
                self._enqueue(item)
                if self.max_frames and self.stats.captured >= self.max_frames:
                    break
        finally:
            self._source_events()
            self.q_in.put(_END)

    def _source_events(self):
        for ev in self.source.events():
            kind = ev.get("kind")
            self._event(f"source_{kind}", ev)
            if kind == "lost":
                with self.stats.lock:
                    self.stats.outages += 1
                if self.line is not None:
                    self.line.fault("source", ev.get("detail", "camera lost"))
            elif kind == "reopened" and self.line is not None:
                self.line.healthy()

    def _enqueue(self, item):
        if self.mode == "latest":
            while True:
                try:
                    self.q_in.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        old = self.q_in.get_nowait()
                    except queue.Empty:
                        continue
                    with self.stats.lock:
                        self.stats.dropped += 1
                    self._event("dropped", {"seq": old[0].seq, "at": "queue"})
        while True:                                # inspect-all: back-pressure, never drop
            try:
                self.q_in.put(item, timeout=0.5)
                return
            except queue.Full:
                if "infer" in self._failed:        # nobody downstream will take it: say so
                    self._event("undecided", {"seq": item[0].seq, "why": "pipeline faulted"})
                    return

    def _infer(self):
        h, w = self.pre.size[1], self.pre.size[0]
        buf = np.empty((self.batch, h, w, 3), np.uint8)
        done = False
        while not done:
            item = self.q_in.get()
            if item is _END:
                break
            items = [item]
            while len(items) < self.batch:
                try:
                    nxt = self.q_in.get_nowait()
                except queue.Empty:
                    break
                if nxt is _END:
                    done = True
                    break
                items.append(nxt)
            n = len(items)
            if n == 1:
                frames = items[0][1][None]           # a view: no copy for a single frame
            else:
                for i, (_, x) in enumerate(items):
                    buf[i] = x
                frames = buf[:n]
            t0 = time.monotonic()
            try:
                maps, scores = self.engine.infer(frames)
            except BaseException:
                self._in_hand("undecided", [f.seq for f, _ in items], "infer")
                raise
            spent = time.monotonic() - t0
            for i, (frame, x) in enumerate(items):
                self.q_out.put((frame, x, maps[i], float(scores[i]), spent, n))
        self.q_out.put(_END)

    def _decide(self):
        thr = self.threshold
        while True:
            item = self.q_out.get()
            if item is _END:
                break
            frame, x, amap, score, spent, n = item
            try:
                self._decide_one(frame, x, amap, score, spent, n, thr)
            except BaseException:
                self._in_hand("undecided", [frame.seq], "decide")
                raise
        self.q_rec.put(_END)

    def _decide_one(self, frame, x, amap, score, spent, n, thr):
        reject, reason, latency, area = judge(frame, amap, score, thr, self.min_area, self.deadline_s)
        d = Decision(frame.seq, frame.t_capture, frame.wall, score, reject, reason, latency, area,
                     frame.encoder, frame.part_id, {"engine_ms": spent * 1000, "batch": n})
        if self.line is not None:
            self.line.decide(d)
        self.stats.decision(d, spent, n)
        if self.view is not None:
            self.view.update(x, amap, d, thr)
        if reject and self.on_reject is not None:
            self.on_reject(d)
        keep = self.save == "all" or (self.save == "flagged" and reject)
        self.q_rec.put((d, x if keep else None, amap if keep else None))

    def _record(self):
        while True:
            item = self.q_rec.get()
            if item is _END:
                break
            if self.store is not None:
                d, image, amap = item
                try:
                    self.store.add(d, image, amap, self.threshold)
                except BaseException:
                    self._in_hand("unrecorded", [d.seq], "record")
                    raise
                if self.store.full.tripped and "record" not in self._failed:   # records.on_full: failsafe
                    self.fault("record", f"records disk full ({self.store.full.tripped}); on_full: failsafe",
                               kind="records")
            if self.line is not None:
                for ev in self.line.events():
                    self._event(f"line_{ev.get('kind')}", ev)
        if self.store is not None:
            self.store.flush()


def run_pipeline(pipeline, status=None, every_s=2.0, drain_s=30.0):
    """Start, publish the status (a RunStatus) every `every_s` through `status(st)` (and at once when a
    stage faults), and wait for the end. After a fault the stages get `drain_s` seconds to
    finish what is in flight; a stage still stuck then is named in the error."""
    pipeline.start()
    next_t = time.monotonic() + every_s
    seen, fault_t = 0, None
    while pipeline.running():
        pipeline.join(timeout=min(0.2, every_s))
        if pipeline.errors and fault_t is None:
            fault_t = time.monotonic()
        if status and (time.monotonic() >= next_t or len(pipeline.errors) != seen):
            seen = len(pipeline.errors)
            status(pipeline.status())
            next_t = time.monotonic() + every_s
        if fault_t is not None and time.monotonic() - fault_t > drain_s:
            stuck = [t.name for t in pipeline._threads if t.is_alive()]
            pipeline.errors.append(f"stages still running {drain_s:g} s after the fault: {', '.join(stuck)}")
            break
    if pipeline.errors:
        if status:
            status(pipeline.status())
        raise EdgeError("; ".join(pipeline.errors))
    return pipeline.status()
