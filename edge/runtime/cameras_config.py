"""The run configuration for several cameras on one box: a `cameras:` list, checked into a
MultiRunConfig. Each camera is checked as a whole single-camera configuration (edge.runtime.config)
made of the top-level keys (the defaults) and its own; an error names `cameras[i].key`.

    bundle: /opt/lineside/current          # default bundle of every camera
    engine: {precision: int8, batch: 4}    # cameras sharing bundle and engine share one engine
    batch_wait_ms: 5                       # longest wait for a fuller batch
    records: {db: records.db}              # one store; every record names its camera
    cameras:
      - id: top
        source: rtsp://10.0.0.21/stream
        roi: [0, 0, 640, 480]              # x, y, w, h; default: the bundle's
        decision: {threshold: 3.2}
        line: {...}                        # this camera's own ejector (docs/line-io.md)
      - id: side
        source: rtsp://10.0.0.22/stream
        bundle: /opt/lineside/side         # its own bundle
    parts:                                 # parts seen by several cameras (docs/cameras.md)
      cameras: [top, side]
      id: {source: modbus, host: 10.0.0.5, register: 100}   # or capture_time, memory, gpio
      combine: any                         # any (default) | all | majority
      deadline_ms: 400
      line: {...}                          # the part's ejector
"""

import dataclasses
import re
from typing import Optional

from ..common.errors import EdgeError
from ..common.validate import _choice, _known, _num

CAMERA_KEYS = ("id", "source", "bundle", "roi", "mode", "engine", "decision", "deadline_ms", "queue_size",
               "line", "max_frames")
TOP_KEYS = ("bundle", "mode", "engine", "decision", "deadline_ms", "queue_size", "records", "view",
            "status_every_s", "max_frames", "cameras", "batch_wait_ms", "engine_workers", "parts")
COMBINE = ("any", "all", "majority")
PART_ID_SOURCES = ("capture_time", "memory", "gpio", "modbus")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_PLACEHOLDER = "camera://placeholder"


@dataclasses.dataclass(frozen=True)
class CameraConfig:
    id: str
    run: object                       # this camera's RunConfig (source, bundle, engine, decision, line...)
    roi: Optional[tuple] = None       # x, y, w, h; None: the bundle's


@dataclasses.dataclass(frozen=True)
class PartsConfig:
    cameras: tuple
    id_source: str = "capture_time"
    tolerance_ms: float = 20.0        # capture_time: views of one part are this close
    counter: Optional[dict] = None    # memory/gpio/modbus: the counter read at capture (outputs.config)
    per_part: int = 1                 # counts per part (an encoder: pulses between parts)
    combine: str = "any"
    deadline_ms: float = 500.0        # after the part's first view; then the fail-safe verdict
    failsafe: str = "reject"
    line: Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class MultiRunConfig:
    top: object                       # the top-level RunConfig (records, view, status_every_s)
    cameras: tuple
    batch_wait_ms: float = 5.0
    parts: Optional[PartsConfig] = None
    engine_workers: Optional[int] = None   # engine calls in flight per shared engine; None: auto

    # What a tool that reads one bundle and one store (edge check --config) finds here: the
    # first camera's bundle and engine, the run's records and view.
    @property
    def bundle(self):
        return self.cameras[0].run.bundle

    @property
    def engine(self):
        return self.cameras[0].run.engine

    @property
    def records(self):
        return self.top.records

    @property
    def view(self):
        return self.top.view

    def to_dict(self):
        from .config import _plain
        return {"cameras": [dict(id=c.id, roi=c.roi, **_plain(c.run)) for c in self.cameras],
                "batch_wait_ms": self.batch_wait_ms, "engine_workers": self.engine_workers or "auto",
                "parts": _plain(self.parts),
                "records": _plain(self.top.records), "status_every_s": self.top.status_every_s}


def _reprefix(exc, prefix):
    where = exc.where
    if where in (None, "config"):
        where = prefix
    else:
        where = f"{prefix}.{where}"
    return EdgeError(exc.reason, where)


def _roi(v, where):
    if v is None:
        return None
    if (not isinstance(v, (list, tuple)) or len(v) != 4
            or any(isinstance(x, bool) or not isinstance(x, int) for x in v) or v[0] < 0 or v[1] < 0
            or v[2] < 1 or v[3] < 1):
        raise EdgeError(f"must be [x, y, width, height] in whole pixels (width, height >= 1), got {v!r}", where)
    return tuple(v)


def validate_cameras(cfg, base_dir, validate_one):
    """`cfg` has a `cameras:` key: a MultiRunConfig. `validate_one(raw, base_dir)` is the
    single-camera validate (edge.runtime.config.validate)."""
    for key in ("source", "line"):
        if key in cfg:
            raise EdgeError(f"is per camera when 'cameras' is given (cameras[i].{key}"
                            + (", or parts.line for the part's ejector)" if key == "line" else ")"), key)
    _known(cfg, TOP_KEYS, "config")
    cams = cfg["cameras"]
    if not isinstance(cams, list) or not cams:
        raise EdgeError("must be a list of one camera or more", "cameras")
    top_raw = {k: v for k, v in cfg.items() if k not in ("cameras", "batch_wait_ms", "engine_workers", "parts")}
    top = validate_one(dict(top_raw, source=_PLACEHOLDER, bundle=top_raw.get("bundle") or "-"), base_dir)
    defaults = {k: v for k, v in top_raw.items() if k in CAMERA_KEYS}
    cameras, seen = [], set()
    for i, cam in enumerate(cams):
        where = f"cameras[{i}]"
        _known(cam, CAMERA_KEYS, where)
        cid = cam.get("id")
        if not isinstance(cid, str) or not _ID.match(cid):
            raise EdgeError(f"must be a name of letters, digits, '_', '.', '-' (up to 32), got {cid!r}", f"{where}.id")
        if cid in seen:
            raise EdgeError(f"camera id {cid!r} is given twice", f"{where}.id")
        seen.add(cid)
        if not cam.get("source"):
            raise EdgeError("is required (a URI)", f"{where}.source")
        if not (cam.get("bundle") or cfg.get("bundle")):
            raise EdgeError("is required (here or at the top level)", f"{where}.bundle")
        raw = dict(defaults)
        for k, v in cam.items():
            if k in ("id", "roi"):
                continue
            both = isinstance(v, dict) and isinstance(raw.get(k), dict) and k in ("engine", "decision")
            raw[k] = dict(raw[k], **v) if both else v
        for k in ("records", "view", "status_every_s"):
            if k in top_raw:
                raw[k] = top_raw[k]
        try:
            run = validate_one(raw, base_dir)
        except EdgeError as exc:
            raise _reprefix(exc, where) from None
        if run.line is not None:
            run = dataclasses.replace(run, line=_camera_line(run.line, cam.get("line"), cid, base_dir, where))
        cameras.append(CameraConfig(cid, run, _roi(cam.get("roi"), f"{where}.roi")))
    parts = _parts(cfg.get("parts"), seen, base_dir)
    workers = cfg.get("engine_workers", "auto")
    workers = None if workers == "auto" else _num(cfg, "engine_workers", "config", 1, 64, None, int)
    return MultiRunConfig(top=top, cameras=tuple(cameras),
                          batch_wait_ms=_num(cfg, "batch_wait_ms", "config", 0, 10000, 5.0, float), parts=parts,
                          engine_workers=workers)


def _camera_line(line, raw_line, cid, base_dir, where):
    """A camera's line outputs are named after it (`<id>.<type>[i]`), and its MQTT outputs
    publish under lineside/box/<id> unless the camera gives its own topic_prefix."""
    raw = dict(raw_line or {})
    outs = []
    for i, o in enumerate(raw.get("outputs") or []):
        if isinstance(o, dict):
            o = dict(o)
            o.setdefault("name", f"{cid}.{o.get('type')}[{i}]")
            if o.get("type") == "mqtt":
                o.setdefault("topic_prefix", f"lineside/box/{cid}")
        outs.append(o)
    if not outs:
        return line
    from ..outputs import validate_line_config
    raw["outputs"] = outs
    return validate_line_config(raw, f"{where}.line", base_dir)


def _parts(p, camera_ids, base_dir):
    if p is None:
        return None
    w = "parts"
    _known(p, ("cameras", "id", "combine", "deadline_ms", "failsafe", "line"), w)
    cams = p.get("cameras")
    if not isinstance(cams, list) or len(cams) < 2 or len(set(cams)) != len(cams):
        raise EdgeError(f"must list two camera ids or more, each once, got {cams!r}", f"{w}.cameras")
    for c in cams:
        if c not in camera_ids:
            raise EdgeError(f"no camera has the id {c!r} (cameras: {', '.join(sorted(camera_ids))})", f"{w}.cameras")
    ident = p.get("id") or {"source": "capture_time"}
    if not isinstance(ident, dict):
        raise EdgeError(f"must be a mapping, got {type(ident).__name__}", f"{w}.id")
    src = _choice(ident, "source", f"{w}.id", PART_ID_SOURCES, "capture_time")
    tolerance, counter, per_part = 20.0, None, 1
    if src == "capture_time":
        _known(ident, ("source", "tolerance_ms"), f"{w}.id")
        tolerance = _num(ident, "tolerance_ms", f"{w}.id", 0.1, 60000, 20.0, float)
    else:
        from ..outputs.config import _encoder
        per_part = _num(ident, "per_part", f"{w}.id", 1, 1 << 30, 1)
        counter = _encoder({k: v for k, v in ident.items() if k != "per_part"}, f"{w}.id")
    line = None
    if p.get("line") is not None:
        from ..outputs import validate_line_config
        line = validate_line_config(p["line"], f"{w}.line", base_dir)
    return PartsConfig(cameras=tuple(cams), id_source=src, tolerance_ms=tolerance, counter=counter,
                       per_part=per_part, combine=_choice(p, "combine", w, COMBINE, "any"),
                       deadline_ms=_num(p, "deadline_ms", w, 1, 600000, 500.0, float),
                       failsafe=_choice(p, "failsafe", w, ("reject", "pass"), "reject"), line=line)

