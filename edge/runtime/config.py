"""The run configuration (`edge run CONFIG.yaml`): read as strict YAML (a key given twice is
an error), checked once by validate() into a RunConfig of frozen dataclasses, the only form
the rest of the runtime sees. An error names the key path and the value at fault. See
deploy/config/example.yaml for a commented example.

    bundle: /opt/lineside/current
    source: file:///data/line.mp4          # or {uri: ..., options: {...}}
    mode: inspect-all                      # or latest
    engine: {kind: auto, precision: fp32, batch: 4, threads: null, dla: null}
    decision: {threshold: null, min_area: 0.0}
    deadline_ms: 500
    queue_size: 8
    records: {db: records.db, images: records/images, quota_mb: 1024, save: flagged, format: jpg,
              on_full: failsafe}             # or degrade: see docs/records.md
    line: {...}                            # docs/line-io.md
    view: {host: 127.0.0.1, port: 8080}
    status_every_s: 2
    max_frames: null
"""

import dataclasses
import os
from typing import Optional

from ..common.errors import EdgeError
from ..common.names import ENGINE_CHOICES, PRECISIONS
from ..common.validate import _bool, _choice, _known, _num, _str
from ..common.yamlfile import load_yaml

TOP = ("bundle", "source", "mode", "engine", "decision", "deadline_ms", "queue_size", "records", "line",
       "view", "status_every_s", "max_frames")
MODES = ("inspect-all", "latest")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    uri: str
    options: dict = dataclasses.field(default_factory=dict)   # checked here by type, by the source by use


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    kind: str = "auto"
    precision: str = "fp32"
    batch: int = 4
    threads: Optional[int] = None
    dla: Optional[int] = None                    # TensorRT DLA core


@dataclasses.dataclass(frozen=True)
class DecisionConfig:
    threshold: Optional[float] = None             # None: the bundle's own
    min_area: float = 0.0


@dataclasses.dataclass(frozen=True)
class RecordsConfig:
    db: Optional[str] = "records.db"             # None: no records
    images: Optional[str] = None                 # None: images/ beside the database
    quota_mb: float = 1024.0
    save: str = "flagged"
    format: str = "jpg"
    on_full: str = "failsafe"                    # or degrade: docs/records.md
    forward: Optional[dict] = None               # the outbox to the plant (edge.records.outbox)


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: Optional[object] = dataclasses.field(default=None, repr=False)  # a Secret; required off loopback
    gallery: int = 12                            # flagged frames shown from the record store


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """What the pipeline itself needs of the run configuration (edge.runtime.pipeline)."""
    mode: str = "inspect-all"
    batch: int = 4
    queue_size: int = 8
    min_area: float = 0.0
    deadline_ms: float = 1000.0
    max_frames: Optional[int] = None
    save: str = "flagged"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    bundle: str
    source: SourceConfig
    mode: str = "inspect-all"
    engine: EngineConfig = EngineConfig()
    decision: DecisionConfig = DecisionConfig()
    deadline_ms: float = 1000.0
    queue_size: int = 8
    records: RecordsConfig = RecordsConfig()
    line: Optional[dict] = None                  # the validated line section (edge.outputs.config)
    view: Optional[ViewConfig] = None
    status_every_s: float = 2.0
    max_frames: Optional[int] = None

    def pipeline(self):
        return PipelineSettings(mode=self.mode, batch=self.engine.batch, queue_size=self.queue_size,
                                min_area=self.decision.min_area, deadline_ms=self.deadline_ms,
                                max_frames=self.max_frames, save=self.records.save)

    def to_dict(self):
        """Plain data (for the run's row in the record store). Not dataclasses.asdict: that
        deep-copies the values, and a line secret (edge.outputs.secrets) refuses to be copied."""
        return _plain(self)


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _forward(rec):
    if rec.get("forward") is None:
        return None
    from ..records.outbox import validate_forward
    return validate_forward(rec["forward"])


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host):
    return host in LOOPBACK or str(host).startswith("127.")


def _view(view):
    """The view section. Off loopback the page, its status and /metrics need a token (token,
    token_file, token_env or token_credential): a plant network is not to see the line for free."""
    from ..outputs.secrets import read_secret
    if not isinstance(view, dict):
        raise EdgeError("must be a mapping (host, port, token...)", "view")
    _known(view, ("host", "port", "gallery", "token", "token_file", "token_env", "token_credential"), "view")
    host = _str(view, "host", "view", "127.0.0.1")
    token = read_secret(view, "token", "view")
    if token is None and not is_loopback(host):
        raise EdgeError(f"the live view on {host} (not loopback) needs a token: give token_file, token_env "
                        "or token_credential", "view.token")
    return ViewConfig(host=host, port=_num(view, "port", "view", 0, 65535, 8080), token=token,
                      gallery=_num(view, "gallery", "view", 0, 100, 12))


def load_config(path):
    """The raw mapping in a run configuration file (checked by validate)."""
    if not os.path.isfile(path):
        raise EdgeError("config file not found", path)
    cfg = load_yaml(path)
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise EdgeError("must be a mapping of keys to values", path)
    return cfg


def _opt_num(d, key, where, lo, hi, kind=float):
    return None if d.get(key) is None else _num(d, key, where, lo, hi, None, kind)


def _source_uri(uri, path_of):
    """Relative file and folder sources are taken from the config file's folder."""
    for prefix in ("file://", "folder://", ""):
        rest = uri[len(prefix):]
        if uri.startswith(prefix) and rest and "://" not in rest and "!" not in rest and not os.path.isabs(rest):
            return prefix + path_of(rest)
    return uri


def _source_options(options, where):
    """The source options' names and types (edge.sources.OPTIONS); the source checks the rest."""
    from ..sources import OPTIONS
    _known(options, tuple(OPTIONS), where)
    out = dict(options)
    for key in ("width", "height", "latency_ms"):
        if options.get(key) is not None:
            out[key] = _num(options, key, where, 1, 1 << 16, None)
    for key, hi in (("fps", 10000), ("stall_s", 86400)):
        if options.get(key) is not None:
            out[key] = _num(options, key, where, 0, hi, None, float)
    for key in ("loop", "drop", "bayer", "sync"):
        if key in options:
            out[key] = _bool(options, key, where, False)
    for key in ("backend", "transport", "format", "features"):
        _str(options, key, where)
    if options.get("reconnect") is not None:
        rc, w = options["reconnect"], f"{where}.reconnect"
        _known(rc, ("initial_s", "max_s"), w)
        out["reconnect"] = {"initial_s": _num(rc, "initial_s", w, 0, 3600, 0.5, float),
                            "max_s": _num(rc, "max_s", w, 0, 3600, 10.0, float)}
    return out


def _source(src, path_of):
    if isinstance(src, str):
        src = {"uri": src}
    _known(src if src is not None else {}, ("uri", "options"), "source")
    if src is None or not src.get("uri"):
        raise EdgeError("is required (a URI: folder, file://, v4l2://, rtsp://, csi://, gige://, gst://)", "source")
    options = src.get("options") or {}
    if not isinstance(options, dict):
        raise EdgeError(f"must be a mapping, got {type(options).__name__}", "source.options")
    return SourceConfig(_source_uri(_str(src, "uri", "source"), path_of), _source_options(options, "source.options"))


def validate(cfg, base_dir="."):
    """The run configuration as a RunConfig with defaults filled in; EdgeError naming the key
    path at fault. Relative paths are taken from the config file's folder. A configuration
    with a `cameras:` list is a MultiRunConfig (edge.runtime.cameras_config)."""
    if isinstance(cfg, dict) and "cameras" in cfg:
        from .cameras_config import validate_cameras
        return validate_cameras(cfg, base_dir, validate)
    _known(cfg, TOP, "config")

    def path_of(value):
        return value if value is None or os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))

    bundle = path_of(_str(cfg, "bundle", "config", required=True))
    source = _source(cfg.get("source"), path_of)
    mode = _choice(cfg, "mode", "config", MODES, "inspect-all")
    eng = cfg.get("engine") or {}
    _known(eng, ("kind", "precision", "batch", "threads", "dla"), "engine")
    engine = EngineConfig(kind=_choice(eng, "kind", "engine", ENGINE_CHOICES, "auto"),
                          precision=_choice(eng, "precision", "engine", PRECISIONS, "fp32"),
                          batch=_num(eng, "batch", "engine", 1, 64, 4),
                          threads=_opt_num(eng, "threads", "engine", 1, 256, int),
                          dla=_opt_num(eng, "dla", "engine", 0, 7, int))
    dec = cfg.get("decision") or {}
    _known(dec, ("threshold", "min_area"), "decision")
    decision = DecisionConfig(threshold=_opt_num(dec, "threshold", "decision", -1e12, 1e12),
                              min_area=_num(dec, "min_area", "decision", 0.0, 1.0, 0.0, float))
    deadline_ms = _num(cfg, "deadline_ms", "config", 1, 600000, 1000, float)
    queue_size = _num(cfg, "queue_size", "config", 1, 4096, 8)
    rec = cfg.get("records") or {}
    _known(rec, ("db", "images", "quota_mb", "save", "format", "on_full", "forward"), "records")
    records = RecordsConfig(db=path_of(_str(rec, "db", "records", "records.db")),
                            images=path_of(_str(rec, "images", "records")),
                            quota_mb=_num(rec, "quota_mb", "records", 1, 10 ** 7, 1024, float),
                            save=_choice(rec, "save", "records", ("flagged", "all", "none"), "flagged"),
                            format=_choice(rec, "format", "records", ("png", "jpg"), "jpg"),
                            on_full=_choice(rec, "on_full", "records", ("failsafe", "degrade"), "failsafe"),
                            forward=_forward(rec))
    line = None
    if cfg.get("line") is not None:
        from ..outputs import validate_line_config
        line = validate_line_config(cfg["line"], "line", base_dir)
    view = cfg.get("view")
    if view is not None:
        view = _view(view)
    return RunConfig(
        bundle=bundle, source=source, mode=mode, engine=engine, decision=decision, deadline_ms=deadline_ms,
        queue_size=queue_size, records=records, line=line, view=view,
        status_every_s=_num(cfg, "status_every_s", "config", 0.1, 3600, 2.0, float),
        max_frames=_opt_num(cfg, "max_frames", "config", 1, 10 ** 12, int))
