"""The run's status: one typed, versioned structure that the pipeline publishes.

The live page, /status.json, /healthz, /metrics, `edge check`, the MQTT telemetry and the
records' run summary all read this one shape (RunStatus.to_dict()); a reader checks
`version` and refuses a status newer than it knows.

    {"version": 1, "t": 1764556800.0, "elapsed_s": 12.3,
     "frames": 120, "captured": 121, "rejects": 4, "reject_rate": 0.033, "drops": 0,
     "late": 0, "faults": 0, "outages": 0, "fps": 9.9,
     "latency_ms": {"p50": 31.2, "p95": 48.9, "p99": 52.0}, "added_ms": {"p50": 3.1, "p95": 5.0},
     "engine_ms": 21.4, "threshold": 0.61,
     "source": {"ok": true, "state": "streaming", "detail": "gstreamer: ..."},
     "engine": {"ok": true, "state": "onnxruntime", "detail": "fp32"},
     "line": {"ok": null, "state": "none", "detail": ""},
     "fault": [], "identity": {"bundle_id": "...", "method": "patchcore", "engine": "onnxruntime",
                              "precision": "fp32", "version": "0.x"}}

`ok` of a part is true (working), false (fault) or null (not present). The run is healthy
when no fault is active and no part is false.

Version 2 adds what a run with several cameras publishes: `cameras`, a CameraStatus per camera
(its own counters, fps, latency, threshold, source and line), and `parts`, a PartsStatus (the
counts and the last part verdicts, each naming its views and the cameras that missed the
deadline). The top-level figures are then the run's totals. A status without them (one camera)
is written as version 1, exactly as before, so readers of version 1 keep reading it."""

import dataclasses
import time
from dataclasses import dataclass, field
from typing import List, Optional

from .errors import EdgeError

STATUS_VERSION = 2
_V2_KEYS = ("cameras", "parts")


@dataclass(frozen=True)
class Part:
    """The health of one part of the run (source, engine, line outputs)."""
    ok: Optional[bool]
    state: str
    detail: str = ""


@dataclass(frozen=True)
class Percentiles:
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0


@dataclass(frozen=True)
class CameraStatus:
    """One camera of a run with several (version 2)."""
    id: str
    frames: int = 0
    captured: int = 0
    rejects: int = 0
    drops: int = 0
    late: int = 0
    outages: int = 0
    fps: float = 0.0
    latency_ms: Percentiles = Percentiles()
    engine_ms: float = 0.0
    threshold: Optional[float] = None
    group: int = 0                      # the engine (shared bundle) its frames go to
    source: Part = Part(None, "unknown")
    line: Part = Part(None, "none")
    fault: List[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d):
        kw = _checked(cls, d, "status.cameras[]")
        if "latency_ms" in kw:
            kw["latency_ms"] = Percentiles(**kw["latency_ms"])
        for key in ("source", "line"):
            if key in kw:
                kw[key] = Part(**kw[key])
        return cls(**kw)


@dataclass(frozen=True)
class PartVerdict:
    """The verdict on one part seen by several cameras: `views` {camera: [frame seq]}, `rejects`
    {camera: its view rejected}, `missing` the cameras whose view did not come before the
    deadline (then `reason` is failsafe:missing:<cameras>)."""
    part: object
    reject: bool
    reason: str
    views: dict = field(default_factory=dict)
    rejects: dict = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)
    latency_ms: float = 0.0

    @property
    def failsafe(self):
        return bool(self.missing)


@dataclass(frozen=True)
class PartsStatus:
    """Parts seen by several cameras (version 2): counts and the last verdicts, oldest first."""
    cameras: List[str] = field(default_factory=list)
    parts: int = 0
    rejects: int = 0
    failsafe: int = 0
    after_part: int = 0                 # views that came after their part was decided
    pending: int = 0
    recent: List[PartVerdict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d):
        kw = _checked(cls, d, "status.parts")
        kw["recent"] = [PartVerdict(**_checked(PartVerdict, r, "status.parts.recent[]")) for r in kw.get("recent", [])]
        return cls(**kw)


def _checked(cls, d, where):
    if not isinstance(d, dict):
        raise EdgeError(f"{where}: not a mapping")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise EdgeError(f"{where}: unknown keys {', '.join(unknown)}")
    return dict(d)


@dataclass(frozen=True)
class RunStatus:
    t: float = 0.0                      # time.time() when taken
    elapsed_s: float = 0.0
    frames: int = 0                     # frames decided
    captured: int = 0
    rejects: int = 0
    reject_rate: float = 0.0            # rejects / frames
    drops: int = 0
    late: int = 0
    faults: int = 0                     # stage failures and line faults seen
    outages: int = 0                    # camera outages
    fps: float = 0.0
    latency_ms: Percentiles = Percentiles()     # capture -> decision
    added_ms: Percentiles = Percentiles()       # latency minus engine time
    engine_ms: float = 0.0              # engine time per frame, mean of the window
    threshold: Optional[float] = None
    source: Part = Part(None, "unknown")
    engine: Part = Part(None, "unknown")
    line: Part = Part(None, "none")
    fault: List[str] = field(default_factory=list)
    identity: dict = field(default_factory=dict)   # bundle_id, method, engine, precision, version
    cameras: List[CameraStatus] = field(default_factory=list)     # version 2: several cameras
    parts: Optional[PartsStatus] = None                           # version 2: parts seen by several
    version: int = STATUS_VERSION

    def health(self):
        """(ok, reason): not ok while a fault is active or a part reports false."""
        if self.fault:
            return False, "; ".join(self.fault)
        for name in ("source", "engine", "line"):
            p = getattr(self, name)
            if p.ok is False:
                return False, f"{name}: {p.state}" + (f" ({p.detail})" if p.detail else "")
        return True, "ok"

    def to_dict(self):
        """Plain data; without cameras and parts it is the version 1 shape."""
        d = dataclasses.asdict(self)
        if not self.cameras and self.parts is None:
            for key in _V2_KEYS:
                del d[key]
            d["version"] = 1
        else:
            d["version"] = STATUS_VERSION
        return d

    @classmethod
    def from_dict(cls, d):
        """Read a status dict (from /status.json, a record summary or MQTT); EdgeError when its
        version is newer than this code knows or a key is unknown."""
        if not isinstance(d, dict):
            raise EdgeError("status: not a mapping")
        v = d.get("version")
        if not isinstance(v, int) or v > STATUS_VERSION or v < 1:
            raise EdgeError(f"status: version {v!r} not understood (this edge reads up to {STATUS_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)} - (set() if v >= 2 else set(_V2_KEYS))
        unknown = sorted(set(d) - names)
        if unknown:
            raise EdgeError(f"status: unknown keys {', '.join(unknown)}")
        kw = dict(d)
        kw.pop("version")                  # the object is of this code's version; to_dict() says which shape
        kw["cameras"] = [CameraStatus.from_dict(c) for c in kw.get("cameras") or []]
        if kw.get("parts") is not None:
            kw["parts"] = PartsStatus.from_dict(kw["parts"])
        for key in ("latency_ms", "added_ms"):
            if key in kw:
                kw[key] = Percentiles(**kw[key])
        for key in ("source", "engine", "line"):
            if key in kw:
                kw[key] = Part(**kw[key])
        return cls(**kw)


def _round(x, digits=3):
    return float(round(float(x), digits))


def source_part(source):
    st = source.stats() if hasattr(source, "stats") else {}
    described = source.describe() if hasattr(source, "describe") else ""
    if st.get("connected", True):
        return Part(True, "streaming", described)
    if not st.get("outages"):             # not open yet, or a file / folder at its end
        return Part(None, "ended" if st.get("frames") else "starting", described)
    return Part(False, "camera lost", described)


def line_part(line):
    if line is None:
        return Part(None, "none", "no line outputs configured")
    st = line.stats()
    if st.get("healthy"):
        return Part(True, "ready", f"{st.get('mode', '')}, {st.get('verdicts', 0)} verdicts sent")
    return Part(False, f"fault: {st.get('fault')}", "")


def build(snapshot, *, source=None, engine_name="", errors=(), line=None, threshold=None, identity=None,
          ended=False, source_state=None, line_state=None):
    """A RunStatus from the pipeline's counters (Stats.snapshot()) and the parts' own state
    (`source_state` / `line_state`: a Part given instead of asking `source` / `line`)."""
    s = snapshot
    frames = int(s["decided"])
    errors = list(errors)
    src = source_state or (source_part(source) if source is not None else Part(None, "unknown"))
    if ended and src.ok is not False:
        src = Part(None, "ended", src.detail)
    eng_fault = [e for e in errors if e.startswith("infer")]
    eng = Part(False, "fault", eng_fault[0]) if eng_fault else Part(True, engine_name or "running",
                                                                       (identity or {}).get("precision", ""))
    ln = line_state or line_part(line)
    fault = list(errors)
    if src.ok is False:
        fault.append(f"source: {src.state}")
    if ln.ok is False:
        fault.append(f"line: {ln.state}")
    line_faults = int(line.stats().get("gaps", 0)) if line is not None else 0
    return RunStatus(
        t=time.time(), elapsed_s=_round(s["elapsed_s"], 1), frames=frames, captured=int(s["captured"]),
        rejects=int(s["rejects"]), reject_rate=_round(s["rejects"] / frames if frames else 0.0, 4),
        drops=int(s["dropped"]), late=int(s["late"]), faults=len(errors) + line_faults,
        outages=int(s["outages"]), fps=_round(s["fps"], 2),
        latency_ms=Percentiles(_round(s["latency_ms_p50"], 2), _round(s["latency_ms_p95"], 2),
                               _round(s["latency_ms_p99"], 2)),
        added_ms=Percentiles(_round(s["added_ms_p50"], 2), _round(s["added_ms_p95"], 2), 0.0),
        engine_ms=_round(s["engine_ms_per_frame"], 2),
        threshold=None if threshold is None else float(threshold),
        source=src, engine=eng, line=ln, fault=fault, identity=dict(identity or {}))


def camera_of(cid, group, st):
    """A camera's CameraStatus from the RunStatus built for it alone."""
    return CameraStatus(id=cid, frames=st.frames, captured=st.captured, rejects=st.rejects, drops=st.drops,
                        late=st.late, outages=st.outages, fps=st.fps, latency_ms=st.latency_ms,
                        engine_ms=st.engine_ms, threshold=st.threshold, group=int(group), source=st.source,
                        line=st.line, fault=list(st.fault))


def combined(named_parts, absent="none"):
    """One Part for the same part of several cameras ({camera: Part}): false when any is false
    (naming the cameras), true when every present one is true, null when none is present."""
    bad = {c: p for c, p in named_parts.items() if p.ok is False}
    if bad:
        states = sorted({p.state for p in bad.values()})
        return Part(False, f"{'; '.join(states)} ({', '.join(bad)})", "; ".join(p.detail for p in bad.values()))
    present = {c: p for c, p in named_parts.items() if p.ok is not None}
    if not present:
        states = sorted({p.state for p in named_parts.values()})
        return Part(None, states[0] if len(states) == 1 else absent, "")
    return Part(True, "; ".join(sorted({p.state for p in present.values()})),
                f"{len(present)} of {len(named_parts)}")


def parts_of(stats, cameras):
    """A PartsStatus from PartJoiner.stats()."""
    if stats is None:
        return None
    return PartsStatus(cameras=list(cameras), parts=int(stats["parts"]), rejects=int(stats["rejects"]),
                       failsafe=int(stats["failsafe"]), after_part=int(stats["after_part"]),
                       pending=int(stats["pending"]), recent=[PartVerdict(**r) for r in stats["recent"]])


def format_line(st):
    """One log line for people."""
    return (f"{st.fps:6.1f} fps  latency p50 {st.latency_ms.p50:6.1f} ms p95 {st.latency_ms.p95:6.1f} ms  "
            f"frames {st.frames}  rejects {st.rejects}  drops {st.drops}  late {st.late}  "
            f"outages {st.outages}  faults {st.faults}")
