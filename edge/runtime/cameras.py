"""Several cameras in one `edge run`: each camera has its own source, region of interest,
threshold, line timing and outputs; cameras that share a bundle (and engine settings) share one
engine, loaded once, and one batcher (edge.runtime.batcher) that puts their frames into one
engine call. Every record, event and status entry names its camera.

Stages: a capture thread per camera -> a batcher thread per engine (or several: engine calls in
flight at once, e.g. one per CPU core) -> a decide thread per engine -> one record thread. A
camera that is lost is its own outage: its own event, its own line's fault and fail-safe; the
other cameras go on. Parts seen by several cameras are joined
by edge.runtime.parts."""

import logging
import queue
import threading
import time

from ..sources import SourceEnded
from .batcher import Batcher
from .pipeline import Stats, judge
from .types import Decision

log = logging.getLogger(__name__)
_END = object()


class Camera:
    """One camera's parts: source, preprocessor, threshold, settings (a PipelineSettings),
    its own line (LineIO or None), its stats, and its feed into the group's batcher."""

    def __init__(self, cid, source, pre, threshold, settings, line=None):
        self.id, self.source, self.pre, self.settings, self.line = cid, source, pre, settings, line
        self.threshold, self.min_area = float(threshold), float(settings.min_area)
        self.deadline_s = settings.deadline_ms / 1000
        self.stats = Stats()
        self.feed = None
        self.group = None
        self.lost = False
        self.in_parts = False
        self.engine_name = None          # for the records' engine column


class MultiPipeline:
    """groups: [(engine, batch, [Camera])]; store, view, parts (a PartJoiner) are optional."""

    def __init__(self, groups, batch_wait_ms=5.0, *, store=None, view=None, parts=None, on_reject=None):
        self.store, self.view, self.parts, self.on_reject = store, view, parts, on_reject
        self.cameras = []
        self.groups = []
        for gi, (engine, batch, cams, *more) in enumerate(groups):
            b = Batcher(engine, batch, batch_wait_ms / 1000)
            b.workers = max(1, int(more[0])) if more else 1     # engine calls in flight at once
            for cam in cams:
                cam.feed = b.feed(cam.id, cam.settings.queue_size, cam.settings.mode)
                cam.group = gi
                cam.in_parts = parts is not None and cam.id in parts.cameras
                self.cameras.append(cam)
            self.groups.append((b, queue.Queue()))
        self.q_rec = queue.Queue(max(256, 64 * len(self.cameras)))
        self.stopping = threading.Event()
        self.errors = []
        self._threads = []
        self.identity = {}               # bundle_id, method, engine, precision, version: for the status
        if view is not None and hasattr(view, "set_cameras"):
            view.set_cameras([c.id for c in self.cameras])

    # ---- control -------------------------------------------------------------------------
    def start(self):
        stages = [(f"capture-{c.id}", self._capture, (c,), [c], None) for c in self.cameras]
        for gi, (b, dq) in enumerate(self.groups):
            cams = [c for c in self.cameras if c.group == gi]
            stages += [(f"infer-{gi}", self._infer, (b, dq), cams, gi) for _ in range(b.workers)]
            stages.append((f"decide-{gi}", self._decide, (dq, b.workers), cams, gi))
        stages.append(("record", self._record, (), self.cameras, None))
        for stage in stages:
            t = threading.Thread(target=self._guard, args=stage, name=f"edge-{stage[0]}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self.stopping.set()

    def running(self):
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout=None):
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not self.running()

    def _guard(self, name, fn, args, cams, group):
        try:
            fn(*args)
        except BaseException as exc:              # a stage's failure reaches the lines and the records
            self.errors.append(f"{name}: {exc}")
            stage = name.split("-")[0]
            self._event(f"{stage}_error", {"error": str(exc), "cameras": [c.id for c in cams]},
                        cams[0].id if len(cams) == 1 else None)
            for c in cams:
                if c.line is not None:
                    c.line.fault({"infer": "engine", "capture": "source"}.get(stage, "queue"), str(exc))
            if stage == "infer":
                self.groups[group][0].abort()
            if stage != "capture":                # a camera's failure is its own; others go on
                self.stopping.set()

    def _event(self, kind, detail, camera=None):
        if camera is not None:
            detail = dict(detail, camera=camera)
        if self.store is not None:
            try:
                self.store.event(kind, detail)
            except Exception as exc:              # a broken store must not stop the line
                log.error("edge: cannot record event %s: %s", kind, exc)

    # ---- stages --------------------------------------------------------------------------
    def _capture(self, cam):
        last_seq = None
        limit = cam.settings.max_frames
        try:
            while not self.stopping.is_set():
                try:
                    frame = cam.source.read(timeout=0.5)
                except SourceEnded:
                    break
                self._source_events(cam)
                if frame is None:
                    continue
                if last_seq is not None and frame.seq > last_seq + 1:
                    with cam.stats.lock:
                        cam.stats.dropped += frame.seq - last_seq - 1
                    self._event("dropped", {"from_seq": last_seq + 1, "count": frame.seq - last_seq - 1,
                                            "at": "source"}, cam.id)
                last_seq = frame.seq
                key = self.parts.key_at_capture() if cam.in_parts else None
                if cam.line is not None:
                    cam.line.expect(frame.seq, frame.t_capture, frame.encoder, frame.part_id)
                with cam.stats.lock:
                    cam.stats.captured += 1
                old = cam.feed.put((frame, cam.pre(frame.image), key))
                if old is not None:
                    with cam.stats.lock:
                        cam.stats.dropped += 1
                    self._event("dropped", {"seq": old[0].seq, "at": "queue"}, cam.id)
                if limit and cam.stats.captured >= limit:
                    break
        finally:
            self._source_events(cam)
            cam.feed.close()

    def _source_events(self, cam):
        for ev in cam.source.events():
            kind = ev.get("kind")
            self._event(f"source_{kind}", ev, cam.id)
            if kind == "lost":
                cam.lost = True
                cam.feed.set_stalled(True)
                with cam.stats.lock:
                    cam.stats.outages += 1
                log.warning("edge run: camera %s lost: %s", cam.id, ev.get("detail", ""))
                if cam.line is not None:
                    cam.line.fault("source", ev.get("detail", "camera lost"))
            elif kind == "reopened":
                cam.lost = False
                cam.feed.set_stalled(False)
                log.info("edge run: camera %s back", cam.id)
                if cam.line is not None:
                    cam.line.healthy()

    def _infer(self, batcher, dq):
        try:
            batcher.run(lambda items, maps, scores, spent: dq.put((items, maps, scores, spent)),
                        inputs_of=lambda it: it[1])
        finally:
            dq.put(_END)

    def _decide(self, dq, workers=1):
        cam_of = {id(c.feed): c for c in self.cameras}
        ends = 0
        try:
            while True:
                got = dq.get()
                if got is _END:
                    ends += 1
                    if ends < workers:
                        continue
                    break
                items, maps, scores, spent = got
                n = len(items)
                for i, (feed, (frame, x, key)) in enumerate(items):
                    cam = cam_of[id(feed)]
                    self._decide_one(cam, frame, x, key, maps[i], float(scores[i]), spent, n)
        finally:
            self.q_rec.put(_END)

    def _decide_one(self, cam, frame, x, key, amap, score, spent, n):
        thr = cam.threshold
        reject, reason, latency, area = judge(frame, amap, score, thr, cam.min_area, cam.deadline_s,
                                              f"camera {cam.id} ")
        d = Decision(frame.seq, frame.t_capture, frame.wall, score, reject, reason, latency, area,
                     frame.encoder, frame.part_id, {"camera": cam.id, "engine_ms": spent * 1000, "batch": n,
                                                    **({"engine": cam.engine_name} if cam.engine_name else {})})
        if cam.line is not None:
            cam.line.decide(d)
        if cam.in_parts:
            d.part_id = str(self.parts.view(cam.id, d, key))
        cam.stats.decision(d, spent, n)
        if self.view is not None:
            self.view.update(x, amap, d, thr, camera=cam.id)
        if reject and self.on_reject is not None:
            self.on_reject(cam.id, d)
        save = cam.settings.save
        keep = save == "all" or (save == "flagged" and reject)
        self.q_rec.put((cam, d, x if keep else None, amap if keep else None))

    def _record(self):
        ends = 0
        while ends < len(self.groups):
            item = self.q_rec.get()
            if item is _END:
                ends += 1
                continue
            cam, d, image, amap = item
            if self.store is not None:
                self.store.add(d, image, amap, cam.threshold)
            if cam.line is not None:
                for ev in cam.line.events():
                    self._event(f"line_{ev.get('kind')}", ev, cam.id)
        for cam in self.cameras:                   # what the lines said since the last record
            if cam.line is not None:
                for ev in cam.line.events():
                    self._event(f"line_{ev.get('kind')}", ev, cam.id)
        if self.store is not None:
            self.store.flush()

    # ---- status --------------------------------------------------------------------------
    def camera_status(self, cam):
        """One camera's status in the run status contract (edge.common.status.RunStatus)."""
        from ..common.status import build
        errors = [e for e in self.errors if e.startswith(f"capture-{cam.id}:")
                  or e.startswith((f"infer-{cam.group}:", f"decide-{cam.group}:", "record:"))]
        return build(cam.stats.snapshot(), source=cam.source, engine_name=cam.engine_name or "",
                     errors=errors, line=cam.line, threshold=cam.threshold,
                     identity={"camera": cam.id}, ended=bool(self._threads) and not self.running())

    def status(self):
        """The run's status (RunStatus, version 2): the totals at the top level, each camera's
        own in `cameras`, the parts seen by several cameras in `parts`."""
        import dataclasses
        from ..common.status import Part, build, camera_of, combined, line_part, parts_of
        per = [(c, self.camera_status(c)) for c in self.cameras]
        lines = {c.id: st.line for c, st in per if c.line is not None}
        if self.parts is not None and self.parts.line is not None:
            lines["parts"] = line_part(self.parts.line)
        ln = combined(lines) if lines else Part(None, "none", "no line outputs configured")
        engines = sorted({c.engine_name for c in self.cameras if c.engine_name})
        st = build(Stats.merged([c.stats for c in self.cameras]), engine_name=", ".join(engines),
                   errors=self.errors, identity=self.identity, ended=bool(self._threads) and not self.running(),
                   source_state=combined({c.id: s.source for c, s in per}, absent="starting"), line_state=ln)
        gaps = sum(int(c.line.stats().get("gaps", 0)) for c in self.cameras if c.line is not None)
        totals = {k: sum(getattr(s, k) for _, s in per) for k in ("frames", "captured", "rejects", "drops", "late",
                                                                  "outages")}
        totals["fps"] = round(sum(s.fps for _, s in per), 2)      # the counts are the cameras' own, summed
        totals["reject_rate"] = round(totals["rejects"] / totals["frames"], 4) if totals["frames"] else 0.0
        return dataclasses.replace(
            st, faults=len(self.errors) + gaps, **totals, cameras=[camera_of(c.id, c.group, s) for c, s in per],
            parts=parts_of(self.parts.stats(), self.parts.cameras) if self.parts is not None else None)

    def snapshot(self):
        """Plain data: {"cameras": {id: {...}}, "total": {...}, "parts": {...} or None}."""
        cams = {}
        for c in self.cameras:
            s = c.stats.snapshot()
            src = c.source.stats() if hasattr(c.source, "stats") else {}
            s.update(camera=c.id, connected=bool(src.get("connected", not c.lost)) and not c.lost,
                     source=c.source.describe(), threshold=c.threshold, group=c.group,
                     line=c.line.stats() if c.line is not None else None)
            cams[c.id] = s
        keys = ("captured", "decided", "rejects", "dropped", "late", "outages")
        total = {k: sum(s[k] for s in cams.values()) for k in keys}
        total["fps"] = sum(s["fps"] for s in cams.values())
        total["engine_calls"] = sum(b.calls for b, _ in self.groups)
        total["mean_batch"] = (sum(b.frames for b, _ in self.groups) / total["engine_calls"]
                               if total["engine_calls"] else 0.0)
        return {"cameras": cams, "total": total,
                "parts": self.parts.stats() if self.parts is not None else None}
